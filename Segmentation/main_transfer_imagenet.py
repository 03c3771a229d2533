"""Train DeepLabV3+ from ImageNet (torchvision's resnet file) weights with a backbone ticket (the original's main_transfer_imagenet.py).

Example (the sweep is sh/transfer_imagenet.sh; see Segmentation/run.py and README "Segmentation (DeepLabV3+)"):

    python -u main_transfer_imagenet.py seed10_imagenet_01 --mask_dir mask-1.pt --year 2012 --crop_val --batch_size 4 --random_seed 10
"""

from Segmentation.run import transfer_entry

if __name__ == "__main__":
    transfer_entry("imagenet")
