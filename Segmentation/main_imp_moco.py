"""IMP of DeepLabV3+'s backbone from MoCo v2 (moco_v2_800ep_pretrain.pth.tar) weights: one round per command (the original's main_imp_moco.py).

Round 0 saves its starting state and trains; round k rewinds to it with round k's mask. Example
(the sweep is sh/imp_moco.sh; see Segmentation/run.py and README "Segmentation (DeepLabV3+)"):

    python -u main_imp_moco.py seed10_imp_moco_0 --imp_num 0 --year 2012 --crop_val --batch_size 4 --random_seed 10
"""

from Segmentation.run import imp_entry

if __name__ == "__main__":
    imp_entry("moco")
