# scikit-learn's handwritten digits (1797 8x8 images, shipped inside scikit-learn), split
# 70/15/15 into train (1257), val (270) and test (270). Samples are (image, label) pairs, so
# default_collate gives [inputs, labels] and the model is called as model(inputs, labels, mode).
dataset_type = "Digits"

train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type=dataset_type, split="train"),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type=dataset_type, split="val"),
)
test_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type=dataset_type, split="test"),
)

val_evaluator = dict(type="Accuracy")
test_evaluator = val_evaluator
