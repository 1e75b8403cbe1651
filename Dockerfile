# DeepSeek-OCR service on a CUDA GPU with vLLM (falls back to the embedded CPU engine without a GPU).
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HF_HOME=/models/hf
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        libgl1 libglib2.0-0 curl && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN pip install -r requirements-gpu.txt

# The code is also mounted over /app by docker-compose: edit it, then `docker restart`.
COPY . /app
# vLLM plugin (an entry point only): every resolution mode, also in `vllm serve` started from this image.
RUN pip install --no-deps ./vllm_plugin
ENV PYTHONPATH=/app

ENV MODEL_PATH=/models/deepseek-ocr ENGINE=auto DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s CMD curl -fsS http://localhost:8000/health || exit 1
CMD ["uvicorn", "serve_ocr:app", "--host", "0.0.0.0", "--port", "8000"]
