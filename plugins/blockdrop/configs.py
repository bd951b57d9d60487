"""The configs of the three BlockDrop recipes. Paper defaults are in each field's help text; the
defaults here are sized for the demo."""

from __future__ import annotations

from dataclasses import dataclass

from app.api import config_field


@dataclass
class BackboneConfig:
    dataset: str = config_field("shapes", "dataset to train on (a registered classification dataset)")
    depth: int = config_field(32, "ResNet depth 6n+2: 20, 32, 56 or 110 (paper: 32 and 110 on CIFAR)", min=8)
    epochs: int = config_field(30, "training epochs (paper's backbones: 164 epochs on CIFAR)", min=1)
    batch_size: int = config_field(128, "batch size (paper: 128)", min=1)
    lr: float = config_field(0.1, "peak SGD learning rate, cosine-decayed to 0 (paper: 0.1, step decay)", min=0)
    momentum: float = config_field(0.9, "SGD momentum", min=0, max=1)
    weight_decay: float = config_field(5e-4, "weight decay (paper's backbones: 1e-4)", min=0)
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)", min=0)
    init: str = config_field(
        "", "start from this checkpoint's backbone (METHOD/NAME, run:ID[/NAME] or a path) instead of random "
            "weights, e.g. to train the full ResNet as long as a fine-tuned BlockDrop backbone; depth comes "
            "from the checkpoint")
    warmup: float = config_field(0.15, "fraction of the steps spent warming the learning rate up from 0",
                                 min=0, max=1)
    drop_prob: float = config_field(
        0.2, "stochastic depth: each block is skipped per sample with this probability while training, "
             "so the backbone tolerates dropped blocks (paper: 0, a plain ResNet)", min=0, max=1)
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")


@dataclass
class PolicyConfig:
    backbone: str = config_field("blockdrop/backbone", "backbone checkpoint: METHOD/NAME, run:ID[/NAME] or a path")
    dataset: str = config_field("shapes", "dataset to train on")
    epochs: int = config_field(15, "epochs (paper: 5000 epochs of CIFAR at batch 2048)", min=1)
    batch_size: int = config_field(256, "batch size (paper: 2048)", min=1)
    lr: float = config_field(1e-3, "Adam learning rate (paper: 1e-3)", min=0)
    gamma: float = config_field(1.0, "penalty γ: reward −γ for a wrong prediction (paper: 1 in this stage)",
                                min=0)
    alpha: float = config_field(0.8, "exploration bound: keep probabilities squeezed into [1−α, α] (paper: 0.8)",
                                min=0.5, max=1)
    beta: float = config_field(0.1, "entropy bonus weight (paper: 0.1)", min=0)
    cl_step_iters: int = config_field(
        8, "iterations per curriculum step: one more block (from the end) is learned after each, so the "
           "curriculum takes K steps and the rest of training learns all K blocks (paper: one epoch of "
           "≈25 iterations per step, then all K for the remaining ~5000 epochs)", min=1)
    policy_arch: str = config_field(
        "strided", "policy network: 'strided' (three wide stride-2 convolutions, whose time at batch 1 "
                   "matches its FLOPs) or 'resnet8' (the paper's ResNet-8; the studio's policies before "
                   "the strided ones, at policy_input_size 16)", choices=("strided", "resnet8"))
    policy_input_size: int = config_field(
        32, "the policy sees the image resized to this size; 32 = the shapes images as they are "
            "(paper: 32 on CIFAR, 112 for 224 ImageNet)", min=4)
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)", min=0)
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")


@dataclass
class FinetuneConfig:
    policy: str = config_field("blockdrop/policy", "policy checkpoint from the `policy` recipe (holds the backbone)")
    dataset: str = config_field("shapes", "dataset to train on")
    epochs: int = config_field(15, "epochs (paper: 2000 epochs of CIFAR)", min=1)
    batch_size: int = config_field(256, "batch size (paper: 256)", min=1)
    lr: float = config_field(1e-3, "Adam learning rate of the policy, cosine-decayed (paper: 1e-4, constant)",
                             min=0)
    backbone_optimizer: str = config_field(
        "sgd", "optimiser of the backbone: 'sgd' (Nesterov momentum 0.9 + weight decay, as the backbone recipe) "
               "or 'adam' (paper: Adam 1e-4); the policy always uses Adam", choices=("sgd", "adam"))
    backbone_lr: float = config_field(
        0.05, "learning rate of the backbone, cosine-decayed (SGD: 0.05 here; paper: Adam 1e-4)", min=0)
    weight_decay: float = config_field(5e-4, "weight decay of the backbone (SGD only)", min=0)
    gamma: float = config_field(1.0, "penalty γ for a wrong prediction: larger keeps more blocks; the studio "
                                     "ships 0.5, 1 and 2 (paper: 10 on CIFAR-10, 5 on ImageNet)", min=0)
    alpha: float = config_field(0.8, "exploration bound on the keep probabilities (paper: 0.8)", min=0.5, max=1)
    train_forward: str = config_field(
        "skip", "backbone forward while training: 'skip' runs each block only on the samples that keep it "
                "(BatchNorm sees what it sees at test time); 'masked' is the paper's mixture",
        choices=("skip", "masked"))
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)", min=0)
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")
