"""Tiny configurations of each timm layout family, shared by the tests (pretrained=False)."""

# name -> (timm kwargs, input size). Inputs are small but keep a >= 2x2 feature map.
BACKBONES = {
    'resnet18': (dict(), 64),
    'densenet121': (dict(), 64),
    'regnety_008': (dict(), 64),
    'mobilenetv3_large_100': (dict(), 64),
    'efficientnet_b0': (dict(), 64),
    'convnext_atto': (dict(), 64),
    'swin_tiny_patch4_window7_224': (dict(img_size=64, window_size=2, depths=(1, 1, 1, 1)), 64),   # NHWC
    'vit_tiny_patch16_224': (dict(img_size=48, depth=2), 48),                                        # NLC, class token
    'deit_tiny_distilled_patch16_224': (dict(img_size=48, depth=2), 48),                             # NLC, cls + dist
    'vit_small_patch14_reg4_dinov2': (dict(img_size=42, depth=2), 42),                               # NLC, registers
    'eva02_tiny_patch14_224': (dict(img_size=42, depth=2), 42),                                      # NLC, EVA
}

# heads that are global average pooling followed by one Linear layer
POOL_LINEAR_HEADS = ['resnet18', 'densenet121', 'regnety_008', 'efficientnet_b0']
