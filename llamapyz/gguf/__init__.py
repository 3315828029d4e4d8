"""The GGUF file format: the reader (`reader`, memory-mapped, zero-copy) and the quant formats (`quants`).
"""
