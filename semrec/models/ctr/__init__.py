"""CTR layers and models (DCN, DeepFM, FinalMLP, LR) over categorical feature ids."""
