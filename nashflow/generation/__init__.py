"""Sampling responses: the transformers backend (``generate``: prompts, stop ids, the samples table;
``decode``: the decoding loop; ``sampling``: temperature, top-k, top-p) and the vLLM backend
(``vllm_backend``). Importing the package imports no torch."""
