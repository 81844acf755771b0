"""The teacher cache: round trip, invalidation, top-k logits, refusals, integrity; only what is needed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from kdistill import ConfigError, Distiller, Match
from kdistill.cache import TeacherCache, cached_loader, topk_soft_targets
from kdistill.data import TokenizedDataset, make_loader
from kdistill.losses import kl, soft_ce

VOCAB = 50
TEXTS = [
    "a fine film", "dull and long and slow", "great", "the plot never lands at all here",
    "warm funny smart", "not good", "one more sentence for the set", "short",
    "the cast is superb and the score soars", "meh", "a mess", "lovely little picture",
]


class WordTokenizer:
    """Deterministic toy tokenizer: [CLS]=1 words [SEP]=2, ids from a stable hash of each word."""

    pad_token_id = 0

    def __call__(self, first, second=None, *, truncation=True, max_length=64, padding=False):
        ids = []
        for text in first:
            words = [3 + sum(map(ord, w)) % (VOCAB - 3) for w in text.split()]
            ids.append(([1] + words + [2])[:max_length])
        return {"input_ids": ids, "token_type_ids": [[0] * len(x) for x in ids]}


def bert_config(layers=2, **kwargs):
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, **kwargs)


def make_models(seed=0, teacher_cls=BertModel, **teacher_kwargs):
    torch.manual_seed(seed)
    teacher = teacher_cls(bert_config(**teacher_kwargs)).eval()
    torch.manual_seed(seed + 1)
    student = teacher_cls(bert_config(layers=1, **teacher_kwargs))
    return teacher, student


MATCHES = [
    Match("hidden.0", "hidden.0", "hidden_mse"),
    Match("hidden.2", "hidden.1", "hidden_mse"),
    Match("attn.1", "attn.0", "attention_mse"),
]


def dataset(texts=TEXTS, max_length=16):
    return TokenizedDataset(texts, [i % 2 for i in range(len(texts))], WordTokenizer(), max_length=max_length)


def live_teacher(distiller, batch):
    return distiller.teacher_features(batch)["teacher"]


# ---------------------------------------------------------------------------------------------
# Round trip


def test_round_trip_equals_live_teacher_features(tmp_path):
    teacher, student = make_models()
    distiller = Distiller(teacher, student, MATCHES)
    data = dataset()
    cache = TeacherCache(tmp_path, distiller, dataset=data)
    assert not cache.complete
    loader = cached_loader(make_loader(data, 4, shuffle=True, seed=1), cache)
    for batch in loader:  # epoch 1 fills
        pass
    assert cache.complete and cache.teacher_runs == 3
    assert (cache.path / "meta.json").is_file()

    for batch in loader:  # epoch 2 reads, with other batch compositions
        cached = batch["teacher_features"]["teacher"]
        live = live_teacher(distiller, batch)
        mask = batch["attention_mask"].bool()
        for index in (0, 2):
            assert cached.hidden[index].shape == live.hidden[index].shape
            assert cached.hidden[index].dtype == torch.float32
            torch.testing.assert_close(cached.hidden[index][mask], live.hidden[index][mask], rtol=2e-3, atol=2e-3)
            assert torch.all(cached.hidden[index][~mask] == 0)
        assert cached.hidden[1] is None  # only what the matches read is stored
        keep = mask[:, None, :, None] & mask[:, None, None, :]
        attn_cached, attn_live = cached.attentions[1], live.attentions[1]
        assert attn_cached.shape == attn_live.shape
        torch.testing.assert_close(attn_cached.expand_as(attn_live)[keep.expand_as(attn_live)],
                                   attn_live[keep.expand_as(attn_live)], rtol=2e-3, atol=1e-3)
        assert set(cached.attentions) == {1}
        assert torch.equal(cached.attention_mask, batch["attention_mask"])
    assert cache.teacher_runs == 3  # epoch 2 never ran the teacher


def test_later_run_reads_the_complete_cache_without_the_teacher(tmp_path):
    teacher, student = make_models()
    data = dataset()
    first = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    first.fill(make_loader(data, 5, shuffle=False))
    assert first.complete

    calls = []
    teacher.register_forward_pre_hook(lambda *args: calls.append(1))
    second = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    assert second.complete and second.path == first.path
    for batch in cached_loader(make_loader(data, 4, shuffle=True), second):
        assert set(batch["teacher_features"]["teacher"].attentions) == {1}
    assert calls == [] and second.teacher_runs == 0
    files = sum(p.stat().st_size for p in second.path.iterdir() if p.name.startswith("f"))
    assert second.disk_bytes() >= files > 0
    # Per example: hidden 0 and 2 (L x 32 each) + attention 1 (4 x L x L), float16.
    lengths = data.teacher.lengths
    assert files == int(sum(2 * (2 * L * 32 + 4 * L * L) for L in lengths))


def test_disk_bytes_is_known_before_any_training(tmp_path):
    teacher, student = make_models()
    data = dataset()
    cache = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    planned = cache.disk_bytes()
    assert planned == int(sum(2 * (2 * L * 32 + 4 * L * L) for L in data.teacher.lengths)) + data.teacher.lengths.nbytes
    assert "MiB on disk" in cache.describe() and "hidden.2" in cache.describe()
    cache.fill(make_loader(data, 6, shuffle=False))
    assert cache.disk_bytes() == planned


# ---------------------------------------------------------------------------------------------
# Invalidation


def _key(tmp_path, teacher, student, matches=MATCHES, data=None):
    return TeacherCache(tmp_path, Distiller(teacher, student, matches), dataset=data or dataset())


def test_key_changes_with_weights_data_features_and_tokenisation(tmp_path):
    teacher, student = make_models()
    base = _key(tmp_path, teacher, student)
    base.fill(make_loader(base.dataset, 6, shuffle=False))
    same = _key(tmp_path, teacher, student)
    assert same.path == base.path and same.complete

    with torch.no_grad():
        teacher.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    changed_weights = _key(tmp_path, teacher, student)
    assert changed_weights.path != base.path and not changed_weights.complete
    with torch.no_grad():
        teacher.encoder.layer[1].output.dense.weight[0, 0] -= 1e-3

    changed_data = _key(tmp_path, teacher, student, data=dataset(TEXTS[:-1] + ["another text"]))
    assert changed_data.path != base.path and not changed_data.complete
    changed_length = _key(tmp_path, teacher, student, data=dataset(max_length=5))
    assert changed_length.path != base.path
    changed_features = _key(tmp_path, teacher, student, matches=MATCHES + [Match("hidden.1", "hidden.1")])
    assert changed_features.path != base.path and not changed_features.complete
    assert _key(tmp_path, teacher, student).path == base.path


# ---------------------------------------------------------------------------------------------
# Top-k logits


def test_topk_logits_rebuild_the_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 3
    rebuilt = topk_soft_targets(logits, 5)
    p_true, p_rebuilt = logits.softmax(-1), rebuilt.softmax(-1)
    top = logits.topk(5, dim=-1).indices
    torch.testing.assert_close(p_rebuilt.gather(-1, top), p_true.gather(-1, top), rtol=1e-5, atol=1e-6)
    rest_true = 1 - p_true.gather(-1, top).sum(-1)
    rest_rebuilt = 1 - p_rebuilt.gather(-1, top).sum(-1)
    torch.testing.assert_close(rest_rebuilt, rest_true, rtol=1e-4, atol=1e-6)
    tail = p_rebuilt.scatter(-1, top, 0.0)
    torch.testing.assert_close(tail.max(-1).values * 35, rest_true, rtol=1e-4, atol=1e-6)  # spread evenly
    # k = C keeps the distribution exactly, at any temperature.
    exact = topk_soft_targets(logits, 40)
    torch.testing.assert_close((exact / 4).softmax(-1), (logits / 4).softmax(-1), rtol=1e-5, atol=1e-6)
    student = torch.randn(6, 40)
    assert abs(float(soft_ce(student, rebuilt)) - float(soft_ce(student, logits))) < 0.05 * float(soft_ce(student, logits))


def test_topk_cache_feeds_kl_and_refuses_logits_mse(tmp_path):
    teacher, student = make_models(teacher_cls=BertForSequenceClassification, num_labels=12)
    data = dataset()
    matches = [Match("logits", "logits", "kl", args={"temperature": 1.0})]
    distiller = Distiller(teacher, student, matches)
    cache = TeacherCache(tmp_path, distiller, dataset=data, logits_topk=4)
    batch = next(iter(cached_loader(make_loader(data, 12, shuffle=False), cache)))
    rebuilt = batch["teacher_features"]["teacher"].logits
    live = live_teacher(distiller, batch).logits
    torch.testing.assert_close(rebuilt, topk_soft_targets(live, 4), rtol=1e-5, atol=1e-5)
    student_logits = torch.randn_like(live)
    assert float(kl(student_logits, rebuilt)) == pytest.approx(float(kl(student_logits, live)), rel=0.1)

    with pytest.raises(ConfigError, match="logits_mse.*top-k keeps only the distribution"):
        TeacherCache(tmp_path, Distiller(teacher, student, [Match("logits", "logits", "logits_mse")]),
                     logits_topk=4)


# ---------------------------------------------------------------------------------------------
# Refusals and integrity


def test_non_deterministic_inputs_are_refused(tmp_path):
    teacher, student = make_models()
    distiller = Distiller(teacher, student, MATCHES)
    data = dataset()
    data.random_augmentation = True
    with pytest.raises(ConfigError, match="random_augmentation = True.*Run without 'cache: teacher'"):
        TeacherCache(tmp_path, distiller, dataset=data)

    data = dataset()
    loader = make_loader(data, 4, shuffle=False)

    class MaskingCollator:
        deterministic = False

        def __call__(self, examples):
            return loader.collate_fn(examples)

    masking = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=MaskingCollator())
    with pytest.raises(ConfigError, match="MaskingCollator marks its examples as random"):
        cached_loader(masking, TeacherCache(tmp_path, distiller))

    from transformers import DataCollatorForLanguageModeling

    class Tok(WordTokenizer):
        mask_token = "[MASK]"
        mask_token_id = 4

    mlm = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=DataCollatorForLanguageModeling(Tok()))
    with pytest.raises(ConfigError, match="masks tokens at random on the fly"):
        cached_loader(mlm, TeacherCache(tmp_path, distiller))


def test_incomplete_cache_is_never_read_as_complete(tmp_path):
    teacher, student = make_models()
    data = dataset()
    partial = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    batch = next(iter(cached_loader(make_loader(data, 4, shuffle=False), partial)))
    assert batch["teacher_features"]["teacher"].hidden[2].shape[0] == 4
    assert not partial.complete and not partial.path.exists()
    assert len(list(tmp_path.glob(".tmp-*"))) == 1  # the fill in progress is private

    fresh = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    assert not fresh.complete
    partial.discard()
    assert not list(tmp_path.glob(".tmp-*"))

    fresh.fill(make_loader(data, 4, shuffle=False))
    assert fresh.complete
    (fresh.path / "meta.json").unlink()  # as if the writer died before the metadata
    assert not TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data).complete

    again = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    again.fill(make_loader(data, 4, shuffle=False))
    assert again.complete
    stored = next(again.path.glob("f00.values"))
    with open(stored, "r+b") as handle:
        handle.truncate(stored.stat().st_size - 2)
    with pytest.warns(UserWarning, match="ignoring the unreadable cache.*f00.values has"):
        broken = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    assert not broken.complete
    broken.fill(make_loader(data, 4, shuffle=False))  # rebuilt in place
    assert TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data).complete


class PlainTeacher(nn.Module):
    """A plain module (forward hooks / logits), its output beyond float16 range when ``scale`` is large."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return input_ids.float()[..., None] * self.scale  # (B, T, 1): per-token "logits"


def test_plain_module_outputs_and_float16_range(tmp_path):
    data = dataset()
    cache = TeacherCache(tmp_path, (PlainTeacher(2.0), ["logits"]), dataset=data)
    batch = next(iter(cached_loader(make_loader(data, 12, shuffle=False), cache)))
    logits = batch["teacher_features"]["teacher"].logits
    assert logits.shape == (12, batch["input_ids"].shape[1], 1)  # token axis found and re-padded
    expected = batch["input_ids"].float()[..., None] * 2.0 * batch["attention_mask"][..., None]
    torch.testing.assert_close(logits, expected)

    huge = TeacherCache(tmp_path, (PlainTeacher(1e4), ["logits"]), dataset=data)
    with pytest.raises(ConfigError, match="beyond float16's range.*dtype=torch.float32"):
        next(iter(cached_loader(make_loader(data, 12, shuffle=False), huge)))
    full = TeacherCache(tmp_path, (PlainTeacher(1e4), ["logits"]), dataset=data, dtype=torch.float32)
    batch = next(iter(cached_loader(make_loader(data, 12, shuffle=False), full)))
    assert batch["teacher_features"]["teacher"].logits.max() == 1e4 * batch["input_ids"].max()


def test_workers_need_a_complete_cache(tmp_path):
    teacher, student = make_models()
    data = dataset()
    cache = TeacherCache(tmp_path, Distiller(teacher, student, MATCHES), dataset=data)
    with pytest.raises(ConfigError, match="workers can only read a complete cache"):
        cached_loader(make_loader(data, 4, shuffle=False, num_workers=1), cache)
    cache.fill(make_loader(data, 4, shuffle=False))
    clone = pickle.loads(pickle.dumps(cache))  # what a worker receives: reopened read-only maps
    batch = make_loader(data, 4, shuffle=False).collate_fn([data[i] for i in range(4)])
    torch.testing.assert_close(clone.features(batch)["teacher"].hidden[2], cache.features(batch)["teacher"].hidden[2])


# ---------------------------------------------------------------------------------------------
# Training with the cache


def test_distillation_loss_with_cache_matches_without(tmp_path):
    teacher, student = make_models()
    data = dataset()
    distiller = Distiller(teacher, student, MATCHES)
    cache = TeacherCache(tmp_path, distiller, dataset=data)
    loader = cached_loader(make_loader(data, 6, shuffle=False), cache)
    cache.fill(loader)
    for batch in loader:
        with_cache = distiller(batch)
        without = distiller({k: v for k, v in batch.items() if k != "teacher_features"})
        assert with_cache.parts.keys() == without.parts.keys()
        for name in without.parts:
            assert float(with_cache.parts[name]) == pytest.approx(float(without.parts[name]), rel=2e-3, abs=1e-5)


def test_trainer_runs_on_a_cached_loader_and_loss_falls(tmp_path):
    from kdistill import TrainConfig, Trainer

    teacher, student = make_models()
    data = dataset()
    distiller = Distiller(teacher, student, MATCHES)
    cache = TeacherCache(tmp_path / "cache", distiller, dataset=data)
    loader = cached_loader(make_loader(data, 4, shuffle=True), cache)
    config = TrainConfig(epochs=4, lr=3e-3, warmup=0, progress=False, tensorboard=False, log_every=1)
    result = Trainer(distiller, loader, config=config).train()
    assert cache.complete and cache.teacher_runs == 3  # the teacher ran in epoch 1 only
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])


def _product_loss(student, teacher):
    return (student * teacher).sum()


@pytest.mark.parametrize("use_cache", [False, True])
def test_a_loss_that_saves_the_teacher_tensor_for_backward_works(tmp_path, use_cache):
    teacher, student = make_models()
    data = dataset()
    distiller = Distiller(teacher, student, [Match("hidden.2", "hidden.1", _product_loss)])
    loader = make_loader(data, 4, shuffle=False)
    if use_cache:
        loader = cached_loader(loader, TeacherCache(tmp_path, distiller, dataset=data))
    batch = next(iter(loader))
    out = distiller(batch)
    out.loss.backward()
    assert student.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_extra_refs_are_stored_beside_the_matched_ones(tmp_path):
    teacher, student = make_models()
    data = dataset()
    distiller = Distiller(teacher, student, MATCHES)
    cache = TeacherCache(tmp_path, distiller, dataset=data, extra_refs=["hidden.1", "pooled"])
    assert [str(r) for r in cache.refs["teacher"]] == ["attn.1", "hidden.0", "hidden.1", "hidden.2", "pooled"]
    batch = next(iter(cached_loader(make_loader(data, 12, shuffle=False), cache)))
    cached = batch["teacher_features"]["teacher"]
    live = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(cached.hidden[1][mask], live.hidden_states[1][mask], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cached.pooled, live.pooler_output, rtol=2e-3, atol=2e-3)


def test_pass_a_model_and_refs_instead_of_a_distiller(tmp_path):
    teacher, _ = make_models()
    data = dataset()
    cache = TeacherCache(tmp_path, (teacher, ["hidden.-1", "attn.0"]), dataset=data)
    assert [str(r) for r in cache.refs["teacher"]] == ["attn.0", "hidden.2"]
    batch = next(iter(cached_loader(make_loader(data, 12, shuffle=False), cache)))
    features = batch["teacher_features"]["teacher"]
    assert features.hidden[2].shape == (12, int(data.teacher.lengths.max()), 32)
    with pytest.raises(ConfigError, match="batches need an 'index'"):
        cache.features({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})


# ---------------------------------------------------------------------------------------------
# Only what is needed: the HF adapter asks for attentions / hidden states only when matched


class _Recorder:
    def __init__(self, model: nn.Module):
        self.calls: list[dict] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")})


@pytest.mark.parametrize(
    ("matches", "hidden", "attentions", "implementation"),
    [
        ([Match("pooled", "pooled", "hidden_mse")], False, False, "sdpa"),
        ([Match("hidden.2", "hidden.1")], True, False, "sdpa"),
        ([Match("attn.1", "attn.0", "attention_mse")], False, False, "sdpa"),  # hooks keep SDPA
    ],
)
def test_hf_adapter_requests_only_what_the_matches_read(matches, hidden, attentions, implementation):
    teacher, student = make_models()
    teacher.set_attn_implementation("sdpa")
    recorder = _Recorder(teacher)
    distiller = Distiller(teacher, student, matches)
    batch = make_loader(dataset(), 4, shuffle=False).collate_fn([dataset()[i] for i in range(4)])
    distiller(batch)
    assert recorder.calls[-1] == {"output_hidden_states": hidden, "output_attentions": attentions}
    assert teacher.config._attn_implementation == implementation


def test_eager_attention_is_requested_only_in_eager_mode():
    teacher, student = make_models()
    teacher.set_attn_implementation("sdpa")
    recorder = _Recorder(teacher)
    distiller = Distiller(teacher, student, [Match("attn.1", "attn.0", "attention_mse")], attention="eager")
    batch = make_loader(dataset(), 4, shuffle=False).collate_fn([dataset()[i] for i in range(4)])
    distiller(batch)
    assert recorder.calls[-1] == {"output_hidden_states": False, "output_attentions": True}
    assert teacher.config._attn_implementation == "eager"
    hooks = Distiller(make_models()[0], student, [Match("attn.1", "attn.0", "attention_mse")], attention="hooks")
    eager_probs = distiller.teacher_features(batch)["teacher"].attentions[1]
    hook_teacher = hooks.teachers["teacher"]
    hook_teacher.load_state_dict(teacher.state_dict())
    hook_probs = hooks.teacher_features(batch)["teacher"].attentions[1]
    keep = batch["attention_mask"].bool()[:, None, :, None] & batch["attention_mask"].bool()[:, None, None, :]
    keep = keep.expand_as(eager_probs)
    torch.testing.assert_close(hook_probs[keep], eager_probs[keep], rtol=1e-4, atol=1e-5)


def test_the_teacher_cache_serves_a_stage_on_train_plus_unlabelled_text(tmp_path, monkeypatch):
    """Joined parts number their items from one (the labelled split's index 0 is not the first
    unlabelled text's): cached losses equal the live ones, step by step."""
    import json
    from pathlib import Path

    from kdistill.config import load_config
    from kdistill.run import run

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    examples = Path(__file__).resolve().parents[1] / "examples"
    losses = {}
    for cache in ("none", "teacher"):
        out = tmp_path / cache
        overrides = ["training.max_steps=6", "data.unlabelled=data/reviews_unlabelled.txt",
                     "data.distil_on=train+unlabelled", "training.progress=false", "training.tensorboard=false",
                     "training.log_every=1", f"output_dir={out}"] + (["cache=teacher"] if cache == "teacher" else [])
        run(load_config(examples / "tinybert_matches.yaml", overrides))
        losses[cache] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                         if r["kind"] == "train"]
    assert len(losses["teacher"]) == 6
    assert losses["teacher"] == pytest.approx(losses["none"], rel=2e-3)  # float16 storage
