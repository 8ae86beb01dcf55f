"""uniperceiver: one shared transformer (Uni-Perceiver, CVPR 2022; Uni-Perceiver-MoE, NeurIPS 2022)
trained on many perception tasks at once and evaluated zero-shot."""
__version__ = "0.1.0"
# end-version
