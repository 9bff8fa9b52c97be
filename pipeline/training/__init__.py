"""`avfuse train`: supervised event heads and self-supervised A/V sync on frozen encoder tokens."""
