"""The evaluation protocols: what ``bench run --protocol`` runs on a pretrained encoder.

- ``base``: what every protocol shares (result type, encoder loading, batched prediction,
  best-on-validation selection, the supervised loop of fine-tuning and segmentation);
- ``frozen``, ``finetune``, ``segmentation``: one file per built-in protocol;
- ``metrics`` and ``localisation``: the scores they report (AUROC, Dice/IoU/HD95, Grad-CAM);
- ``registry``: the protocols by name, built-in and from the ``cxrbench.protocols`` entry points.
"""
