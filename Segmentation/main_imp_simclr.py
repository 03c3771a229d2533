"""IMP of DeepLabV3+'s backbone from SimCLR (simclr_pretrain.pth) weights: one round per command (the original's main_imp_simclr.py).

Round 0 saves its starting state and trains; round k rewinds to it with round k's mask. Example
(the sweep is sh/imp_simclr.sh; see Segmentation/run.py and README "Segmentation (DeepLabV3+)"):

    python -u main_imp_simclr.py seed10_imp_simclr_0 --imp_num 0 --year 2012 --crop_val --batch_size 4 --random_seed 10
"""

from Segmentation.run import imp_entry

if __name__ == "__main__":
    imp_entry("simclr")
