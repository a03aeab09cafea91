"""The evaluation harness: the paper's zero-shot tasks, each with and without tools.

``toolformer evaluate --task {math,dates,cloze,perplexity} --data PATH --model BASE [FINETUNED]``
(see :mod:`evaluation.cli`). Modules: ``datasets`` (loaders for the published formats),
``scoring`` (the paper's answer rules), ``dates`` (the DATESET-like generator), ``perplexity``,
``runner`` (conditions and generation) and ``report`` (tables and plot).
"""
