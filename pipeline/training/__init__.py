"""`avfuse train`: supervised event heads and self-supervised A/V sync on frozen encoder tokens
(``clip_tokens`` computes and caches a clip's tokens in process).

May import ``compute`` (the stages' batch functions, without Ray) and everything below it.
"""
