#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu's staging put vLLM into /tmp/site (see bench/RESULTS.md):
#   bash bench/gpu_run.sh check     # every route through vLLM (dummy weights)
#   bash bench/gpu_run.sh check2    # the same with DeepSeek-OCR-2
#   bash bench/gpu_run.sh service   # the service: modes token check, per-mode rates, 256-page burst, soak, engine death
#                                   # (defaults: managed `vllm serve`, 14 API servers on 16 cores; in process:
#                                   # EXTRA="--extra-env VLLM_API_SERVERS=0")
#   bash bench/gpu_run.sh engine    # naive path (vLLM guard, serial preprocessing); engine alone with our guard
#                                   # (a one-token fill pass, then preprocessing cached; NOGUARD=1: also without it)
#   bash bench/gpu_run.sh moe       # vLLM's fused-MoE tuner (bench/moe_tune.py) -> /tmp/moe_tuned, then the engine on it
#   bash bench/gpu_run.sh engine512 # engine alone with 512 sequences (bf16 KV; fp8 KV too with FP8=1), cached
#   bash bench/gpu_run.sh remote    # `vllm serve` + our plugin and guard, 8 API servers: openai client, then this service as front
#                                   # (ENGINES=2 API_SERVERS=4: two engines sharing the GPU; FRONT_PHASES=, SKIP_PEER=1,
#                                   # SKIP_FRONT=1: the openai client only, PASSES bursts)
#   bash bench/gpu_run.sh bench/guard_device_check.py   # any script: does the guard's logits write wait for the GPU?
#   bash bench/gpu_run.sh bench/encoder_graph_check.py --model /tmp/dsocr   # encoder graphs' embeddings vs eager
# Environment: PAGES, PASSES, PHASES, EXTRA (gpu_bench flags), PROFILE_S (py-spy: the API process during the burst,
# the EngineCore during the engine's cached pass), MOE=/tmp/moe_tuned (tuned MoE configs for every run:
# VLLM_TUNED_CONFIG_FOLDER; unset = the table shipped in engines/moe_configs; MOE=none = vLLM's default config),
# ENGINE_ARGS (engine_bench flags for every engine run, e.g. --encoder-cudagraph; --torch-profile 20: vLLM's torch
# profiler over 20 decode steps of the pass after the fill, per-op CUDA/CPU times in $OUT/torch/profiler_out_0.txt),
# NGRAM_GUARD_STATS=1 (the guard's find/write time per step, logged by vLLM's engine process every 500 steps).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
export PATH=/tmp/spy/bin:/tmp/site/bin:$PATH
if [ -d .whl7 ] && [ ! -f /tmp/site/.extras ]; then  # the service's own wheels (fetch_wheels.sh + bench/gpu_extras.sh)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl7/*.whl && touch /tmp/site/.extras
  # py-spy is a binary under bin/, which pip --target does not merge into an existing /tmp/site/bin
  ls .whl7/py_spy-*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --target /tmp/spy .whl7/py_spy-*.whl
fi
if [ ! -f /tmp/site/.plugin ]; then  # the vllm.general_plugins entry point (engines.vllm_modes:register)
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site ./vllm_plugin && touch /tmp/site/.plugin
  rm -rf vllm_plugin/build vllm_plugin/*.egg-info
fi
[ -f /tmp/dsocr/config.json ] || python3 .gpu/make_dummy_model.py /tmp/dsocr >/dev/null
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export OUT
if [ "${MOE:-}" = none ]; then export VLLM_TUNED_CONFIG_FOLDER=/tmp/no_moe_configs  # no file there: vLLM's default
elif [ -n "${MOE:-}" ] && ls "$MOE"/E=*.json >/dev/null 2>&1; then export VLLM_TUNED_CONFIG_FOLDER=$MOE; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Each engine run's whole output goes to $OUT/engine_N.log; the terminal gets the figures.
engine() { n=$(ls "$OUT"/engine_*.log 2>/dev/null | wc -l); echo "engine_$n: $* ${ENGINE_ARGS:-}"
  python3 bench/engine_bench.py "$@" ${ENGINE_ARGS:-} 2>&1 | tee "$OUT/engine_$n.log" \
    | grep --line-buffered -E "RESULT|engine up|Error|MoE|GIL held|guard: |^ *[0-9.]+% |^-- top"; }
case "${1:-check}" in
  check) python3 bench/gpu_check.py --engine vllm --model /tmp/dsocr --load-format dummy; rc=$?
         tail -n 40 /tmp/gpu_check_server.log; exit $rc ;;
  check2) [ -f /tmp/dsocr2/config.json ] || python3 bench/make_dummy_ocr2.py /tmp/dsocr /tmp/dsocr2
         python3 bench/gpu_check.py --engine vllm --model /tmp/dsocr2 --load-format dummy; rc=$?
         tail -n 40 /tmp/gpu_check_server.log; exit $rc ;;
  service) python3 bench/gpu_bench.py --model /tmp/dsocr --phases "${PHASES:-modes,mode_rates,burst,soak,death}" \
             --pages "${PAGES:-256}" --passes "${PASSES:-2}" --profile-s "${PROFILE_S:-0}" ${EXTRA:-} 2>&1 \
             | tee "$OUT/service.log" | grep --line-buffered -v "^MODE"
           grep -iE "error|Traceback|renderer processes|input processing" "$OUT/gpu_bench_server.log" | head -20 ;;
  engine) [ -n "${NAIVE-1}" ] && engine --guard vllm --passes cold --pages "${PAGES:-256}" --mm-cache-gb 0
          engine --guard batched --passes "fill,cached${NOGUARD:+,cached-noguard}" --pages "${PAGES:-256}" \
            --profile-s "${PROFILE_S:-0}" ;;
  moe) export VLLM_TUNED_CONFIG_FOLDER=${MOE:-/tmp/moe_tuned}
       timeout "${TUNE_S:-300}" python3 bench/moe_tune.py --out "$VLLM_TUNED_CONFIG_FOLDER" ${TUNE_ARGS:-} 2>&1 | tail -n 40
       cp "$VLLM_TUNED_CONFIG_FOLDER"/E=*.json "$OUT"/ 2>/dev/null
       engine --guard batched --passes cold,cached --pages "${PAGES:-256}" ;;
  engine512) engine --guard batched --passes fill,cached --pages 512 --max-num-seqs 512 --mm-cache-gb 24
             if [ -n "${FP8:-}" ]; then
               engine --guard batched --passes fill,cached --pages 512 --max-num-seqs 512 --mm-cache-gb 24 --kv-cache-dtype fp8
             fi ;;
  remote) python3 bench/serve_compare.py --api-servers "${API_SERVERS:-8}" --pages "${PAGES:-256}" \
            --engines "${ENGINES:-1}" --front-phases "${FRONT_PHASES:-burst}" ${SKIP_PEER:+--skip-peer} \
            ${SKIP_FRONT:+--skip-front} --passes "${PASSES:-1}" 2>&1 | tee "$OUT/remote.log" | grep --line-buffered -v "^MODE" ;;
  *) python3 "$@" ;;
esac
