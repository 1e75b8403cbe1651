#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu's staging put vLLM into /tmp/site (see bench/RESULTS.md):
#   bash bench/gpu_run.sh check   # every route through vLLM (dummy weights)
#   bash bench/gpu_run.sh check2  # the same with DeepSeek-OCR-2
#   bash bench/gpu_run.sh bench   # naive baseline (LLM.generate) then the service over HTTP, same pages
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
if [ -d .whl7 ] && [ ! -f /tmp/site/.extras ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl7/*.whl && touch /tmp/site/.extras
fi
[ -f /tmp/dsocr/config.json ] || python3 .gpu/make_dummy_model.py /tmp/dsocr
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "${1:-check}" in
  check) python3 bench/gpu_check.py --engine vllm --model /tmp/dsocr --load-format dummy; rc=$?
         tail -n 40 /tmp/gpu_check_server.log; exit $rc ;;
  check2) [ -f /tmp/dsocr2/config.json ] || python3 bench/make_dummy_ocr2.py /tmp/dsocr /tmp/dsocr2
         python3 bench/gpu_check.py --engine vllm --model /tmp/dsocr2 --load-format dummy; rc=$?
         tail -n 40 /tmp/gpu_check_server.log; exit $rc ;;
  bench) python3 .gpu/bench_dummy.py --pages "${PAGES:-256}" --out-tokens 1000 --max-num-seqs 256 --passes ngram 2>&1 | grep -E "RESULT|engine up"
         python3 bench/gpu_bench.py --model /tmp/dsocr --pages "${PAGES:-256}" --out-tokens 1000 --passes "${PASSES:-2}" ${EXTRA:-}; rc=$?
         tail -n 20 /tmp/gpu_bench_server.log; exit $rc ;;
  *) python3 "$@" ;;
esac
