"""limner.data: from a user's image folder to uint8 training arrays.

Modules (data flows top to bottom; none of them imports torch except ``batch``):

- ``decode``: the one image-decode function (allowlist, bomb limit, truncation, EXIF, modes).
- ``transforms``: the resize / centre-crop policy.
- ``sources``: what a path holds (imagefolder, sidecar captions, class folders, plain, IDX,
  npz) and the safe folder walk; ``arrays`` reads IDX and npz.
- ``cache``: the on-disk uint8 cache keyed by content + settings.
- ``dataset``: ``load_dataset`` -> ``ImageDataset``.
- ``check``: ``limner data check`` (same acceptance rule as the loader).
- ``batch``: the ``Batch`` the trainer hands to a family step.
"""
