"""Pretraining: the one loop every method goes through, and what keeps a long run safe.

- ``loop``: the training loop (views, loss, optimiser step, logging, resume);
- ``schedule``: the learning-rate schedule (warm-up, cosine);
- ``checkpoints``: atomic end-of-epoch checkpoints and the newest readable one;
- ``lease``: one process pretrains a method at a time (a lease file with a heartbeat);
- ``diagnostics``: how far the encoder moved and how its features spread (the learning check's evidence).
"""
