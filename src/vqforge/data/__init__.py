"""Data: image folders, video clips (PyAV), pseudo-videos from images, sample photos; sharded, resumable loading.

Batches are uint8 tensors (B, D, H, W, C), D = sequence_length; `to_model_input` makes the model's
(B·D, C, H, W) float input in [-1, 1].
"""

from .dataset import BadFileWarning, ClipDataset, Item, SampleSpec, epoch_order, index_files, seeded_rng
from .images import load_image, probe_image
from .loader import ResumeWarning, TrainStream, ValLoader, build_train_stream, build_val_loader
from .sampler import ShardedBatchSampler
from .samples import SAMPLE_PHOTO_ATTRIBUTION, SAMPLE_PHOTOS_TRAIN, SAMPLE_PHOTOS_VAL, sample_photo_split
from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_data_config, media_kind, resolve_split, resolve_sources
from .transforms import CropParams, resize_crop, to_model_input, to_uint8_frames
from .video import Clip, MediaError, VideoInfo, probe_video, read_clip

__all__ = [
    "BadFileWarning", "ClipDataset", "Item", "SampleSpec", "epoch_order", "index_files", "seeded_rng",
    "load_image", "probe_image",
    "ResumeWarning", "ShardedBatchSampler", "TrainStream", "ValLoader", "build_train_stream",
    "build_val_loader", "check_data_config",
    "SAMPLE_PHOTO_ATTRIBUTION", "SAMPLE_PHOTOS_TRAIN", "SAMPLE_PHOTOS_VAL", "sample_photo_split",
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "media_kind", "resolve_split", "resolve_sources",
    "CropParams", "resize_crop", "to_model_input", "to_uint8_frames",
    "Clip", "MediaError", "VideoInfo", "probe_video", "read_clip",
]
