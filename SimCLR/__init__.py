"""SimCLR pre-training tickets: IMP on a contrastively pre-trained ResNet (entry script: main.py)."""
