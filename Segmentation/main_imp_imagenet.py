"""IMP of DeepLabV3+'s backbone from ImageNet (torchvision's resnet file) weights: one round per command (the original's main_imp_imagenet.py).

Round 0 saves its starting state and trains; round k rewinds to it with round k's mask. Example
(the sweep is sh/imp_imagenet.sh; see Segmentation/run.py and README "Segmentation (DeepLabV3+)"):

    python -u main_imp_imagenet.py seed10_imp_imagenet_0 --imp_num 0 --year 2012 --crop_val --batch_size 4 --random_seed 10
"""

from Segmentation.run import imp_entry

if __name__ == "__main__":
    imp_entry("imagenet")
