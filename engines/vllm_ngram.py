"""The batched n-gram guard as a vLLM logits-processor class (importable by vLLM's engine-core process and by
`vllm serve --logits-processors engines.vllm_ngram:BatchedNGramLogitsProcessor`)."""

from process.ngram_norepeat import make_vllm_processor

BatchedNGramLogitsProcessor = make_vllm_processor()
# Pickled by reference (vLLM's config travels to worker processes): name the class where it lives.
BatchedNGramLogitsProcessor.__module__ = __name__
BatchedNGramLogitsProcessor.__qualname__ = "BatchedNGramLogitsProcessor"
