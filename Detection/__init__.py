"""YOLOv4 detection on a ResNet backbone (the original's Resnet50-YOLOv4): model, loss, VOC data, VOC AP."""
