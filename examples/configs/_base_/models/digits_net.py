# A small CNN with a `backbone` (conv-BN-ReLU, depthwise conv-BN-ReLU, strided conv-BN-ReLU)
# and a `head` (global pool + linear): enough for paramwise_cfg's custom_keys, norm and
# depthwise rules to act on. mmengine's BaseModel calling convention:
# model(inputs, labels, mode='loss' | 'predict' | 'tensor').
model = dict(type="DigitsNet", num_classes=10, width=16)
