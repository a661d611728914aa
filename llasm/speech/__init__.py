"""Speech output around the model's unit head: discrete units (``units``: feature encoder + k-means),
the unit vocoder (``vocoder``: UnitHifiGan, streaming) and its GAN training (``vocoder_training``).
"""
