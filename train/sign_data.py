"""Sign-language data for every trainer that reads clips: the embedded synthetic set or a keypoint table."""

from datasets import concatenate_datasets

from configuration import SequenceEncoderConfig
from data.keypoint_table import load_keypoint_table
from data.synthetic_signs import EVAL_SPLITS, make_signs_splits


def load_sign_splits(data_args):
    """(train, held-out) datasets of clips with `keypoints`, `features` (when there are any), `sentence`,
    `sentence_id`, `signer_id`; the synthetic clips have the shapes of `SequenceEncoderConfig`'s defaults.

    The synthetic held-out set is the three splits of `make_signs_splits` (`num_eval` clips each) one after the
    other, with a `split` column naming each clip's: seen sentences, unseen sentences, unseen signers.

    `data_args` carries `dataset` ('synthetic' or 'keypoint_table'), `num_train`, `num_eval`, `data_seed`, and for a
    table `train_table`, `eval_table`, `keypoint_dir`, `feature_dir`; optionally `occlusion_rate` (synthetic: share
    of clips with an occluded span, NaN keypoints; 0 when absent, for processors that reject NaN).
    """
    if data_args.dataset == "synthetic":
        defaults = SequenceEncoderConfig()
        splits = make_signs_splits(
            data_args.num_train,
            data_args.num_eval,
            seed=data_args.data_seed,
            num_keypoints=defaults.num_keypoints,
            keypoint_dim=defaults.keypoint_dim,
            feature_dim=defaults.feature_dim,
            occlusion_rate=getattr(data_args, "occlusion_rate", 0.0),
        )
        held_out = [splits[name].add_column("split", [name] * len(splits[name])) for name in EVAL_SPLITS]
        return splits["train"], concatenate_datasets(held_out)
    if data_args.dataset == "keypoint_table":
        if not (data_args.train_table and data_args.eval_table and data_args.keypoint_dir):
            raise ValueError("--dataset keypoint_table needs --train_table, --eval_table and --keypoint_dir.")
        return tuple(
            load_keypoint_table(table, data_args.keypoint_dir, data_args.feature_dir)
            for table in (data_args.train_table, data_args.eval_table)
        )
    raise ValueError(f"--dataset must be 'synthetic' or 'keypoint_table' for sign clips, got {data_args.dataset!r}.")


def clip_shapes(dataset, use_visual_features: bool) -> dict[str, int]:
    """`num_keypoints`, `keypoint_dim` and (when the clips carry per-frame features) `feature_dim` of a clip dataset,
    read from its schema: the `SequenceEncoderConfig` fields that must match the data."""
    _, num_keypoints, keypoint_dim = dataset.features["keypoints"].shape
    shapes = {"num_keypoints": num_keypoints, "keypoint_dim": keypoint_dim}
    if "features" in dataset.features:
        shapes["feature_dim"] = dataset.features["features"].shape[1]
    elif use_visual_features:
        raise ValueError(
            "The clips have no per-frame visual features: pass --feature_dir with the keypoint table, or train on "
            "keypoints alone with --use_visual_features false."
        )
    return shapes


def processor_sequence_settings(sequence_config: SequenceEncoderConfig | None) -> dict[str, int]:
    """The processor arguments that must match a model's sequence tower; none for a model without one."""
    if sequence_config is None:
        return {}
    return {name: getattr(sequence_config, name) for name in ("max_frames", "num_keypoints", "keypoint_dim", "feature_dim")}


def sequence_inputs(examples: list[dict], sequence_config: SequenceEncoderConfig) -> dict:
    """Processor inputs for the clip streams the model reads."""
    return {
        "keypoints": [example["keypoints"] for example in examples] if sequence_config.use_keypoints else None,
        "frame_features": (
            [example["features"] for example in examples] if sequence_config.use_visual_features else None
        ),
    }


__all__ = ["clip_shapes", "load_sign_splits", "processor_sequence_settings", "sequence_inputs"]
