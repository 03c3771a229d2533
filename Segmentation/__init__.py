"""Semantic segmentation (DeepLabV3/V3+ on ResNet backbones) for lottery tickets, as the original's Segmentation/."""
