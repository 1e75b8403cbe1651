"""The batched n-gram guard as a vLLM logits-processor class (importable by vLLM's engine-core process)."""

from process.ngram_norepeat import make_vllm_processor

BatchedNGramLogitsProcessor = make_vllm_processor()
