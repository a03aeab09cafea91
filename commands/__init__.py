"""The commands: the CLI (``toolformer ...``), the demo and the augmentation report, on top of every layer."""
