"""Speech output around the model's unit head: the answer's phonemes it may read (``phonemes``), discrete
units (``units``: feature encoder + k-means), the token2wav (``token2wav``: units -> mel -> waveform, or
``vocoder``: the unit HiFi-GAN, streaming) and their training (``mel_training``, ``vocoder_training``).
"""
