"""Train DeepLabV3+ from MoCo v2 (moco_v2_800ep_pretrain.pth.tar) weights with a backbone ticket (the original's main_transfer_moco.py).

Example (the sweep is sh/transfer_moco.sh; see Segmentation/run.py and README "Segmentation (DeepLabV3+)"):

    python -u main_transfer_moco.py seed10_moco_01 --mask_dir mask-1.pt --year 2012 --crop_val --batch_size 4 --random_seed 10
"""

from Segmentation.run import transfer_entry

if __name__ == "__main__":
    transfer_entry("moco")
