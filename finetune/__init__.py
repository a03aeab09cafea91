"""Fine-tuning on the augmented texts (paper section 2, last step): ``toolformer finetune --help``."""
