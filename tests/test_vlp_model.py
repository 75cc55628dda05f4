import math

import pytest
import torch
from torch import nn
from transformers import BertModel, CLIPModel, CLIPConfig, CLIPVisionModel

from conftest import tiny_vlp_config
from configuration import SequenceEncoderConfig, VLPConfig
from modeling import VLPModel
from modeling import modeling_contrastive
from modeling.modeling_contrastive import EmbeddingMemory, clip_loss, siglip_loss, supervised_contrastive_loss
from modeling.modeling_pooling import PERCEIVER_LATENT_INIT_STD, AttentionPooling, _key_padding_mask
from train.backbones import tiny_text_config, tiny_vision_config
from train.grad_cache import feature_cached_backward


def sequence_batch(batch_size=8, frames=12, vocab=128):
    return dict(
        input_ids=torch.randint(5, vocab, (batch_size, 6)),
        attention_mask=torch.ones(batch_size, 6, dtype=torch.long),
        keypoints=torch.randn(batch_size, frames, 21, 2),
        frame_features=torch.randn(batch_size, frames, 8),
        frame_mask=torch.ones(batch_size, frames, dtype=torch.long),
    )


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="visual side"):
        VLPConfig(vision_config=None, sequence_config=None)
    with pytest.raises(ValueError, match="pooling_type"):
        tiny_vlp_config(pooling_type="max")
    with pytest.raises(ValueError, match="one weight per dimension"):
        tiny_vlp_config(matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="include projection_dim"):
        tiny_vlp_config(matryoshka_dims=[16, 8])
    with pytest.raises(ValueError, match="repeats a dimension"):
        tiny_vlp_config(matryoshka_dims=[32, 16, 16])
    with pytest.raises(ValueError, match="use_keypoints"):
        SequenceEncoderConfig(use_keypoints=False, use_visual_features=False)


def test_matryoshka_weights_stay_with_their_dimensions():
    config = tiny_vlp_config(projection_dim=32, matryoshka_dims=[8, 32, 16], matryoshka_weights=[0.25, 1.0, 0.5])
    assert config.matryoshka_dims == [32, 16, 8] and config.matryoshka_weights == [1.0, 0.5, 0.25]


def test_config_defaults_follow_clip_and_siglip():
    assert tiny_vlp_config().logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert tiny_vlp_config(loss_type="siglip").logit_scale_init_value == pytest.approx(math.log(10))
    assert tiny_vlp_config().logit_scale_max == pytest.approx(math.log(100))


def test_forward_output_and_initial_parameters():
    model = VLPModel(tiny_vlp_config())
    batch = sequence_batch()
    batch["pixel_values"] = torch.randn(8, 3, 32, 32)
    out = model(**batch, return_loss=True)
    assert out.loss.ndim == 0 and out.matryoshka_losses.shape == (3,)
    assert out.logits_per_visual.shape == (8, 8)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_visual.T)  # two matmuls: equal up to rounding
    assert torch.allclose(out.visual_embeds.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    # the loss is the weight-normalised mean of the per-dimension losses
    assert out.loss.item() == pytest.approx(out.matryoshka_losses.mean().item(), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_forward_computes_the_loss_only_when_asked_and_otherwise_scores_local_pairs(loss_type):
    """As in `transformers.CLIPModel`: no `return_loss`, no loss; the logits are this batch's visual x text scores,
    which need not pair up one to one."""
    model = VLPModel(tiny_vlp_config(vision_config=None, loss_type=loss_type)).eval()
    batch = sequence_batch()
    with torch.no_grad():
        out = model(**{**batch, "input_ids": batch["input_ids"][:5], "attention_mask": batch["attention_mask"][:5]})
        with_loss = model(**batch, return_loss=True)
    assert out.loss is None and out.matryoshka_losses is None
    expected = model.logit_scale.exp() * out.visual_embeds @ out.text_embeds.T
    if loss_type == "siglip":
        expected = expected + model.logit_bias
    torch.testing.assert_close(out.logits_per_visual, expected)
    assert out.logits_per_visual.shape == (8, 5) and torch.equal(out.logits_per_text, out.logits_per_visual.T)
    assert with_loss.loss.ndim == 0 and with_loss.logits_per_visual.shape == (8, 8)


def test_forward_without_return_loss_runs_no_collective(monkeypatch):
    """Under data parallelism (faked: world size 2) evaluation through `forward` must not all-gather, or a rank
    evaluating alone waits forever for the others. Asking for the loss does gather."""
    model = VLPModel(tiny_vlp_config(vision_config=None)).eval()
    batch = sequence_batch()

    def all_gather_single(tensor, gather_dim, group):
        raise AssertionError("forward ran a collective")

    monkeypatch.setattr(modeling_contrastive, "_world", lambda: (0, 2))
    monkeypatch.setattr(modeling_contrastive.functional_collectives, "all_gather_single", all_gather_single)
    with torch.no_grad():
        assert model(**batch).loss is None
        assert model(**batch, return_loss=False).loss is None
        with pytest.raises(AssertionError, match="collective"):
            model(**batch, return_loss=True)


def test_clip_and_siglip_losses_take_pre_gathered_columns(monkeypatch):
    """Columns passed in are used as they are (no gather); the default gathers them (a no-op on one process)."""
    v, t = nn.functional.normalize(torch.randn(4, 16), dim=-1), nn.functional.normalize(torch.randn(4, 16), dim=-1)
    groups, scale, bias = torch.tensor([0, 1, 1, 2]), torch.tensor(2.0), torch.tensor(-3.0)
    columns = dict(all_visual_embeds=v, all_text_embeds=t, all_group_ids=groups)
    for loss, args in ((clip_loss, (v, t, scale)), (siglip_loss, (v, t, scale, bias))):
        expected = loss(*args, group_ids=groups)
        monkeypatch.setattr(modeling_contrastive, "gather_with_grad", lambda x: pytest.fail("gathered"))
        actual = loss(*args, group_ids=groups, **columns)
        monkeypatch.undo()
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e)


def test_logit_scale_is_clamped_to_ln_100():
    model = VLPModel(tiny_vlp_config())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_perceiver_latents_keep_their_initialisation_through_post_init_and_from_pretrained(tmp_path):
    model = VLPModel(tiny_vlp_config(pooling_type="perceiver", num_latents=64))
    std = model.pooling.latents.std().item()
    assert abs(std - PERCEIVER_LATENT_INIT_STD) < 0.1, f"latents re-initialised to std {std}"
    model.save_pretrained(tmp_path)
    reloaded = VLPModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded.pooling.latents, model.pooling.latents)


def test_attention_pooling_equals_multihead_attention_with_its_weights():
    """The folded single-query attention is `nn.MultiheadAttention(probe, tokens, tokens)`, mask and gradients too."""
    torch.manual_seed(0)
    pooling = AttentionPooling(32, 4).double()
    nn.init.normal_(pooling.probe)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    hidden_states = torch.randn(3, 7, 32, dtype=torch.float64, requires_grad=True)

    def reference(states):
        tokens = pooling.norm(states)
        probe = pooling.probe.expand(len(states), -1, -1)
        pooled, _ = pooling.attention(probe, tokens, tokens, key_padding_mask=_key_padding_mask(mask))
        return (pooled + pooling.mlp(pooled))[:, 0]

    ours, expected = pooling(hidden_states, mask), reference(hidden_states)
    torch.testing.assert_close(ours, expected)
    upstream = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, [hidden_states, *pooling.parameters()], upstream)
    expected_grads = torch.autograd.grad(expected, [hidden_states, *pooling.parameters()], upstream)
    for got, want in zip(ours_grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("pooling_type", ["attention", "perceiver"])
def test_each_pooling_head_learns(pooling_type):
    """A class-conditional toy task: 8 motion classes, captions naming the class. The loss must fall far below
    its starting value (the seed's broken Perceiver stayed flat at ln(batch))."""
    torch.manual_seed(0)
    model = VLPModel(tiny_vlp_config(pooling_type=pooling_type, vision_config=None))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    prototypes = torch.randn(8, 12, 21, 2)
    losses = []
    for _ in range(150):
        labels = torch.randperm(8).repeat(2)
        batch = dict(
            input_ids=torch.stack([torch.tensor([101, 10 + int(c), 30 + int(c), 102]) for c in labels]),
            keypoints=prototypes[labels] + 0.3 * torch.randn(16, 12, 21, 2),
        )
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.5 * start, f"{pooling_type}: loss {start:.3f} -> {end:.3f}"


def test_clip_loss_matches_reference():
    v, t = nn.functional.normalize(torch.randn(6, 16), dim=-1), nn.functional.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(2.0)
    loss, logits_v, _ = clip_loss(v, t, scale)
    logits = scale.exp() * v @ t.T
    expected = 0
    for i in range(6):
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert torch.allclose(loss, expected / 12, atol=1e-6)
    assert torch.allclose(logits_v, logits)


def test_siglip_loss_matches_reference():
    v, t = nn.functional.normalize(torch.randn(5, 16), dim=-1), nn.functional.normalize(torch.randn(5, 16), dim=-1)
    scale, bias = torch.tensor(math.log(10)), torch.tensor(-10.0)
    loss, _, _ = siglip_loss(v, t, scale, bias)
    expected = 0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            expected += -torch.log(torch.sigmoid(z * (10 * v[i] @ t[j] - 10)))
    assert torch.allclose(loss, expected / 5, atol=1e-5)


def test_siglip_loss_with_groups_makes_every_pair_within_a_group_positive():
    v, t = nn.functional.normalize(torch.randn(5, 16), dim=-1), nn.functional.normalize(torch.randn(5, 16), dim=-1)
    scale, bias, groups = torch.tensor(math.log(10)), torch.tensor(-10.0), torch.tensor([0, 0, 1, 2, 2])
    loss, _, _ = siglip_loss(v, t, scale, bias, group_ids=groups)
    expected = sum(
        -torch.log(torch.sigmoid((1.0 if groups[i] == groups[j] else -1.0) * (10 * v[i] @ t[j] - 10)))
        for i in range(5)
        for j in range(5)
    )
    assert torch.allclose(loss, expected / 5, atol=1e-5)
    assert torch.allclose(siglip_loss(v, t, scale, bias, group_ids=torch.arange(5))[0], siglip_loss(v, t, scale, bias)[0])


def test_supervised_contrastive_loss_matches_reference():
    x = nn.functional.normalize(torch.randn(6, 8), dim=-1)
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    loss = supervised_contrastive_loss(x, groups, temperature=0.5)
    terms = []
    for i in range(6):
        positives = [j for j in range(6) if j != i and groups[j] == groups[i]]
        if not positives:
            continue
        denominator = torch.logsumexp(torch.stack([x[i] @ x[a] / 0.5 for a in range(6) if a != i]), 0)
        terms.append(-torch.stack([x[i] @ x[p] / 0.5 - denominator for p in positives]).mean())
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_clip_loss_with_groups_spreads_the_target_over_every_copy_of_the_text():
    v, t = nn.functional.normalize(torch.randn(5, 16), dim=-1), nn.functional.normalize(torch.randn(5, 16), dim=-1)
    groups = torch.tensor([0, 0, 1, 2, 2])
    scale = torch.tensor(1.5)
    loss, _, _ = clip_loss(v, t, scale, group_ids=groups)
    logits = scale.exp() * v @ t.T
    expected = 0
    for i in range(5):
        same = [j for j in range(5) if groups[j] == groups[i]]
        expected += -sum(torch.log_softmax(logits[i], 0)[j] + torch.log_softmax(logits[:, i], 0)[j] for j in same) / len(same)
    assert torch.allclose(loss, expected / 10, atol=1e-6)
    # distinct groups are exactly the plain loss
    assert torch.allclose(clip_loss(v, t, scale, group_ids=torch.arange(5))[0], clip_loss(v, t, scale)[0])


def test_supervised_contrastive_loss_with_memory_equals_the_loss_over_batch_and_memory():
    x = nn.functional.normalize(torch.randn(4, 8), dim=-1)
    past = nn.functional.normalize(torch.randn(3, 8), dim=-1)
    groups, past_groups = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 5, 1])
    memory = EmbeddingMemory(size=3, dim=8)
    memory.push(past, past_groups)
    loss = supervised_contrastive_loss(x, groups, temperature=0.5, memory=memory)
    candidates, candidate_groups = torch.cat([x, past]), torch.cat([groups, past_groups])
    terms = []
    for i in range(4):
        others = [a for a in range(7) if a != i]
        denominator = torch.logsumexp(torch.stack([x[i] @ candidates[a] / 0.5 for a in others]), 0)
        positives = [p for p in others if candidate_groups[p] == groups[i]]
        terms.append(-torch.stack([x[i] @ candidates[p] / 0.5 - denominator for p in positives]).mean())
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_embedding_memory_is_first_in_first_out():
    memory = EmbeddingMemory(size=4, dim=2)
    memory.push(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    assert memory.num_filled == 3
    memory.push(2 * torch.ones(2, 2), torch.tensor([4, 5]))  # wraps around: the oldest row (group 1) goes
    assert memory.num_filled == 4 and sorted(memory.group_ids.tolist()) == [2, 3, 4, 5]
    memory.push(3 * torch.ones(6, 2), torch.arange(10, 16))  # more rows than slots: only the newest 4 stay
    assert sorted(memory.group_ids.tolist()) == [12, 13, 14, 15] and torch.all(memory.embeds == 3)
    with pytest.raises(ValueError, match="size of at least 1"):
        EmbeddingMemory(size=0, dim=2)


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_feature_cached_accumulation_equals_full_batch_gradient(loss_type):
    model = VLPModel(tiny_vlp_config(vision_config=None, loss_type=loss_type)).double().eval()  # dropout: next test
    batch = {k: v.double() if v.is_floating_point() else v for k, v in sequence_batch(batch_size=8).items()}
    model(**batch, return_loss=True).loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    micro_batches = [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]

    def encode(b):
        visual = model.get_visual_features(keypoints=b["keypoints"], frame_features=b["frame_features"], frame_mask=b["frame_mask"])
        return visual, model.get_text_features(b["input_ids"], b["attention_mask"])

    feature_cached_backward(micro_batches, encode, lambda v, t: model.contrastive_loss(v, t)[0])
    cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert cached.keys() == full.keys() and "logit_scale" in cached
    for name in full:
        torch.testing.assert_close(cached[name], full[name], rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


def test_feature_cached_accumulation_replays_dropout():
    """With dropout on, the re-encoding pass must see the same masks as the caching pass."""
    sequence = SequenceEncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     dropout=0.3, use_visual_features=True, feature_dim=8, max_frames=16)
    model = VLPModel(tiny_vlp_config(vision_config=None, sequence_config=sequence)).double().train()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in sequence_batch(batch_size=8).items()}
    micro_batches = [{k: v[i : i + 4] for k, v in batch.items()} for i in range(0, 8, 4)]

    def encode(b):
        visual = model.get_visual_features(keypoints=b["keypoints"], frame_features=b["frame_features"], frame_mask=b["frame_mask"])
        return visual, model.get_text_features(b["input_ids"], b["attention_mask"])

    torch.manual_seed(1)
    parts = [encode(b) for b in micro_batches]  # one graph over all micro-batches, same RNG order
    model.contrastive_loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))[0].backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(1)
    feature_cached_backward(micro_batches, encode, lambda v, t: model.contrastive_loss(v, t)[0])
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-9, atol=1e-11, msg=name)


def test_from_backbones_loads_pretrained_weights_from_local_folders(tmp_path):
    vision = CLIPVisionModel(tiny_vision_config(image_size=32, patch_size=8, hidden_size=32, num_layers=1))
    text = BertModel(tiny_text_config(vocab_size=128, hidden_size=32, num_layers=1))
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    model = VLPModel.from_backbones(
        text_model_name_or_path=str(tmp_path / "text"),
        vision_model_name_or_path=str(tmp_path / "vision"),
        pooling_hidden_size=32, num_pooling_heads=2, projection_dim=32, matryoshka_dims=[32, 16],
    )
    for name, tensor in vision.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], tensor), name
    for name, tensor in text.state_dict().items():
        assert torch.equal(model.text_model.state_dict()[name], tensor), name


def test_from_backbones_takes_the_vision_tower_of_a_full_clip_checkpoint(tmp_path):
    clip = CLIPModel(CLIPConfig(
        vision_config=tiny_vision_config(image_size=32, patch_size=8, hidden_size=32, num_layers=1).to_dict(),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99),
        projection_dim=16,
    ))
    clip.save_pretrained(tmp_path / "clip")
    BertModel(tiny_text_config(vocab_size=128, hidden_size=32, num_layers=1)).save_pretrained(tmp_path / "text")
    model = VLPModel.from_backbones(str(tmp_path / "text"), str(tmp_path / "clip"), pooling_hidden_size=32,
                                    num_pooling_heads=2, projection_dim=32, matryoshka_dims=[32])
    patch_key = next(k for k in model.vision_model.state_dict() if k.endswith("patch_embedding.weight"))
    clip_patch = next(v for k, v in clip.state_dict().items() if k.startswith("vision_model") and k.endswith("patch_embedding.weight"))
    assert torch.equal(model.vision_model.state_dict()[patch_key], clip_patch)


def test_frozen_towers_stay_frozen_through_save_and_load(tmp_path):
    built = VLPModel(tiny_vlp_config(freeze_vision_tower=True, freeze_text_tower=True))
    built.save_pretrained(tmp_path)
    for model in (built, VLPModel.from_pretrained(tmp_path)):  # loading makes new parameters; the freeze must follow
        assert not any(p.requires_grad for p in model.vision_model.parameters())
        assert not any(p.requires_grad for p in model.text_model.parameters())
        assert all(p.requires_grad for p in model.pooling.parameters())
        assert model.logit_scale.requires_grad and not model.logit_bias.requires_grad  # CLIP loss: no bias


def test_bad_inputs_raise_clear_errors():
    model = VLPModel(tiny_vlp_config(vision_config=None))
    batch = sequence_batch()
    with pytest.raises(ValueError, match="no image tower"):
        model(input_ids=batch["input_ids"], pixel_values=torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match="8 visual inputs but 4 texts"):
        model(
            **{**batch, "input_ids": batch["input_ids"][:4], "attention_mask": batch["attention_mask"][:4]},
            return_loss=True,
        )
    with pytest.raises(ValueError, match="needs pixel_values, keypoints or frame_features"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="max_frames"):
        model.get_visual_features(keypoints=torch.randn(2, 40, 21, 2))
