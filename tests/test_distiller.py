"""The Distiller: named parts, weights and schedules, projections, teachers, labels, custom losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from kdistill import Distiller, Match, register_loss
from kdistill.errors import ConfigError, NonFiniteLossError, RefError, ShapeError
from kdistill.losses import LOSSES, hidden_mse, kl, soft_ce
from kdistill.schedules import Linear, Piecewise
from tiny_engine import tiny_bert, token_batch


LENGTHS = [7, 5, 3]


@pytest.fixture(scope="module")
def teacher():
    return tiny_bert(2, 32, seed=0, labels=3)


def make_student(hidden: int = 16, seed: int = 1):
    return tiny_bert(2, hidden, seed=seed, labels=3, dropout=0.0)


def batch(**kw):
    return token_batch(lengths=LENGTHS, labels=3, **kw)


def raw_features(distiller, data):
    """Teacher and student features computed outside the distiller's own bookkeeping."""
    return distiller.teacher_features(data)["teacher"], distiller.student_features(data)


def test_parts_are_named_after_loss_and_refs(teacher):
    distiller = Distiller(teacher, make_student(32), [
        Match("logits", loss="kl", args={"temperature": 2.0}),
        Match("hidden.2", "hidden.1"),
        Match("hidden.2", "hidden.1", loss="cosine", name="cls_cos"),
        Match("hidden.-1", "hidden.-1"),
        Match("hidden.2", "hidden.2"),  # the same as the previous one after resolution
    ], hard_label_weight=0.5)
    expected = ["kl[logits]", "hidden_mse[hidden.1<-hidden.2]", "cls_cos", "hidden_mse[hidden.-1]",
                "hidden_mse[hidden.2]", "hard_label"]
    assert distiller.part_names() == expected
    out = distiller(batch())
    assert list(out.parts) == expected
    total = sum(out.parts.values())
    torch.testing.assert_close(out.loss.detach(), total)
    assert all(not p.requires_grad for p in out.parts.values()) and out.loss.requires_grad


def test_duplicate_names_are_numbered(teacher):
    distiller = Distiller(teacher, make_student(32), [Match("hidden.1"), Match("hidden.1", weight=2.0)])
    assert distiller.part_names() == ["hidden_mse[hidden.1]", "hidden_mse[hidden.1]#2"]


def test_weights_and_weight_schedules_are_applied(teacher):
    student = make_student(32).eval()
    distiller = Distiller(teacher, student, [
        Match("hidden.1", weight=0.25, name="fixed"),
        Match("hidden.2", weight=Linear(0.0, 2.0, start=0, end=10), name="ramp"),
    ])
    data = batch()
    teacher_features, student_features = raw_features(distiller, data)
    mask = data["attention_mask"]
    raw1 = hidden_mse(student_features.hidden[1], teacher_features.hidden[1], mask=mask)
    raw2 = hidden_mse(student_features.hidden[2], teacher_features.hidden[2], mask=mask)
    for step, ramp in [(0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)]:
        out = distiller(data, step=step, total_steps=100)
        torch.testing.assert_close(out.parts["fixed"], 0.25 * raw1)
        if ramp == 0.0:
            assert "ramp" not in out.parts  # a zero weight skips the loss entirely
        else:
            torch.testing.assert_close(out.parts["ramp"], ramp * raw2)
        torch.testing.assert_close(out.loss.detach(), sum(out.parts.values()))


def test_loss_argument_schedules_are_evaluated_per_step(teacher):
    student = make_student(32).eval()
    temperature = Piecewise((10,), (4.0, 1.0))
    distiller = Distiller(teacher, student, [Match("logits", loss="kl", args={"temperature": temperature})])
    data = batch()
    teacher_features, student_features = raw_features(distiller, data)
    for step, t in [(0, 4.0), (9, 4.0), (10, 1.0)]:
        expected = kl(student_features.logits, teacher_features.logits, temperature=t)
        torch.testing.assert_close(distiller(data, step=step).parts["kl[logits]"], expected)


def test_matches_are_active_only_in_their_window(teacher):
    distiller = Distiller(teacher, make_student(32), [
        Match("hidden.1", stop=0.5, name="layers"),
        Match("logits", loss="kl", start=0.5, name="prediction"),
        Match("hidden.2", start=3, stop=5, name="window"),
    ])
    data = batch()
    active = {step: set(distiller(data, step=step, total_steps=10).parts) for step in range(10)}
    assert active[0] == active[2] == {"layers"}
    assert active[3] == active[4] == {"layers", "window"}
    assert active[5] == active[9] == {"prediction"}


def test_projection_only_where_widths_differ_and_the_loss_needs_it(teacher):
    distiller = Distiller(teacher, make_student(16), [
        Match("hidden.2", "hidden.2"),  # 16 vs 32, element-wise loss -> linear
        Match("logits", loss="kl"),  # same classes -> none
        Match("attn.1", loss="attention_mse"),  # (B, H, T, T) on both sides -> none
        Match("hidden.1", loss="mmd"),  # width-free loss -> none
        Match("hidden.1", loss="cosine", projection="mlp"),  # asked for explicitly
    ])
    plan = distiller.prepare(batch())
    assert [p.projection for p in plan] == ["linear 16->32", None, None, None, "mlp 16->32"]
    assert plan[0].student_shape == (3, 7, 16) and plan[0].teacher_shape == (3, 7, 32)
    assert set(distiller.projections) == {"m0", "m4"}
    assert isinstance(distiller.projections["m0"], torch.nn.Linear)


def test_projections_are_made_in_prepare_never_in_a_forward(teacher):
    """A projection made by the first forward would be missing from an optimiser built before it:
    the forward refuses and says to prepare first; with prepare() first it runs."""
    lazy = Distiller(teacher, make_student(16), [Match("hidden.2", "hidden.2")])
    with pytest.raises(ConfigError, match=r"the matches need projections \(hidden_mse\[hidden.2\]\): call "
                                          r"distiller.prepare\(first_batch\) before building the optimiser"):
        lazy(batch())
    prepared = Distiller(teacher, make_student(16), [Match("hidden.2", "hidden.2")])
    prepared.prepare(batch())
    assert prepared(batch()).loss.requires_grad
    same = Distiller(teacher, make_student(32), [Match("hidden.2")])  # nothing to project: a forward may prepare
    assert same(batch()).loss.requires_grad


def test_same_width_needs_no_projection(teacher):
    distiller = Distiller(teacher, make_student(32), [Match("hidden.2")])
    assert distiller.prepare(batch())[0].projection is None
    assert len(distiller.projections) == 0


def test_width_mismatch_without_projection_proposes_the_fix(teacher):
    distiller = Distiller(teacher, make_student(16), [Match("hidden.2", projection=None)])
    with pytest.raises(ShapeError) as info:
        distiller(batch())
    message = str(info.value)
    assert "widths differ (student 'hidden.2' is 16, teacher 'hidden.2' is 32)" in message
    assert "Add `projection: linear` to the match" in message


def test_shape_errors_of_a_loss_name_the_match(teacher):
    other = tiny_bert(2, 32, seed=3, labels=5)  # 5 classes vs the teacher's 3
    distiller = Distiller(teacher, other, [Match("logits", loss="kl")])
    with pytest.raises(ShapeError, match=r"^kl\[logits\]: kl: numbers of classes differ \(student 5, teacher 3\)"):
        distiller.prepare(batch())


def test_projections_are_saved_and_trained_teachers_are_not(teacher):
    student = make_student(16)
    distiller = Distiller(teacher, student, [Match("hidden.2"), Match("logits", loss="kl")])
    distiller.prepare(batch())
    keys = set(distiller.state_dict())
    assert {"projections.m0.weight", "projections.m0.bias"} <= keys
    assert all(k.startswith(("student.", "projections.")) for k in keys)
    assert len(keys) == len(student.state_dict()) + 2
    parameter_ids = {id(p) for p in distiller.parameters()}
    assert id(distiller.projections["m0"].weight) in parameter_ids
    assert not parameter_ids & {id(p) for p in teacher.parameters()}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in distiller.parameters())

    distiller.train()
    assert student.training and not teacher.training
    assert all(not m.training for m in teacher.modules())
    out = distiller(batch())
    out.loss.backward()
    assert distiller.projections["m0"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_runs_without_grad_and_stays_deterministic(teacher):
    distiller = Distiller(teacher, make_student(32), [Match("hidden.2")])
    distiller.train()
    first = distiller.teacher_features(batch())["teacher"]
    second = distiller.teacher_features(batch())["teacher"]
    assert not first.hidden[2].requires_grad
    assert torch.equal(first.hidden[2], second.hidden[2])  # eval mode: no dropout


def test_hard_label_part_and_batches_without_labels(teacher):
    student = make_student(32).eval()
    distiller = Distiller(teacher, student, [Match("logits", loss="kl")], hard_label_weight=0.3)
    data = batch()
    out = distiller(data)
    expected = 0.3 * F.cross_entropy(distiller.student_features(data).logits, data["labels"])
    torch.testing.assert_close(out.parts["hard_label"], expected)
    unlabelled = {k: v for k, v in data.items() if k != "labels"}
    out = distiller(unlabelled)
    assert list(out.parts) == ["kl[logits]"]
    torch.testing.assert_close(out.loss.detach(), out.parts["kl[logits]"])


def test_hard_label_only_distiller_has_a_logits_adapter(teacher):
    distiller = Distiller(teacher, make_student(32), [], hard_label_weight=1.0)
    out = distiller(batch())
    assert list(out.parts) == ["hard_label"]
    # And a batch with nothing to learn gives a zero that still back-propagates.
    empty = distiller({k: v for k, v in batch().items() if k != "labels"})
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad and empty.parts == {}


def test_non_finite_guard_names_the_part(teacher):
    def broken(student, teacher):
        return (student - teacher).square().mean() * float("nan")

    distiller = Distiller(teacher, make_student(32), [Match("logits", loss="kl"), Match("hidden.2", loss=broken)])
    distiller.prepare(batch())
    with pytest.raises(NonFiniteLossError, match=r"step 7: the loss is not finite; the part\(s\) responsible: "
                                                 r"broken\[hidden.2\]\.$"):
        distiller(batch(), step=7)
    out = distiller(batch(), check_finite=False)
    assert torch.isnan(out.loss)


def test_ensemble_of_soft_targets_is_the_weighted_mean_of_probabilities():
    teachers = {"a": tiny_bert(2, 32, seed=10, labels=3), "b": tiny_bert(2, 24, seed=11, labels=3)}
    generator = torch.Generator().manual_seed(0)
    for model in teachers.values():
        with torch.no_grad():  # confident teachers that disagree clearly
            model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 5)
    seen = {}

    def probe(student, teacher, *, temperature):
        seen["teacher"] = teacher
        return soft_ce(student, teacher, temperature=temperature)

    student = make_student(32).eval()
    temperature = 3.0
    distiller = Distiller(teachers, student, [
        Match("logits", loss=probe, teacher_name="ensemble", args={"temperature": temperature}),
        Match("logits", loss="soft_ce", teacher_name="b", args={"temperature": temperature}, name="only_b"),
    ], teacher_weights={"a": 3.0, "b": 1.0})
    data = batch()
    out = distiller(data)
    logits = {name: model(**{k: v for k, v in data.items() if k != "labels"}).logits for name, model in teachers.items()}
    mixed = 0.75 * (logits["a"] / temperature).softmax(-1) + 0.25 * (logits["b"] / temperature).softmax(-1)
    torch.testing.assert_close((seen["teacher"] / temperature).softmax(-1), mixed, atol=1e-6, rtol=1e-5)
    # Mixing probabilities is not mixing logits: the two differ for disagreeing teachers.
    mixed_logits = (0.75 * logits["a"] + 0.25 * logits["b"]) / temperature
    assert (mixed_logits.softmax(-1) - mixed).abs().max() > 0.02
    student_logits = distiller.student_features(data).logits
    expected = -(mixed * (student_logits / temperature).log_softmax(-1)).sum(-1).mean() * temperature**2
    torch.testing.assert_close(out.parts["probe[logits]"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.parts["only_b"], soft_ce(student_logits, logits["b"], temperature=temperature))


def test_unknown_teacher_name_lists_the_teachers():
    teachers = {"big": tiny_bert(2, 32, seed=0), "other": tiny_bert(2, 32, seed=1)}
    with pytest.raises(ConfigError, match=r"matches\[0\].teacher_name: no teacher named 'bgi'; "
                                          r"teachers are: big, other \(or 'ensemble'\)"):
        Distiller(teachers, make_student(32), [Match("logits", loss="kl", teacher_name="bgi")])


def test_refs_are_checked_against_both_models(teacher):
    with pytest.raises(RefError, match=r"'hidden.5' is out of range: .*the model has 2 layers"):
        Distiller(teacher, make_student(32), [Match("hidden.5", "hidden.1")])
    with pytest.raises(RefError, match=r"student.*'attn.2' is out of range: valid are layers 0–1"):
        Distiller(teacher, make_student(32), [Match("attn.1", "attn.2", loss="attention_mse")])
    distiller = Distiller(teacher, make_student(32), [Match("hidden.-1", "hidden.-2")])
    assert [(str(b.teacher_refs[0]), str(b.student_refs[0])) for b in distiller.bound] == [("hidden.2", "hidden.1")]


def test_unknown_loss_and_unknown_loss_arguments(teacher):
    with pytest.raises(ConfigError, match=r"matches\[0\].loss: unknown loss 'hiden_mse'; did you mean 'hidden_mse'\?"):
        Distiller(teacher, make_student(32), [Match("hidden.1", loss="hiden_mse")])
    with pytest.raises(ConfigError, match=r"matches\[0\].args.temprature: loss 'kl' takes no argument 'temprature'; "
                                          r"did you mean 'temperature'\? It takes: temperature, t2_scale"):
        Distiller(teacher, make_student(32), [Match("logits", loss="kl", args={"temprature": 2})])


def test_user_loss_registered_by_decorator(teacher):
    name = "test_distiller_scaled_mse"
    try:
        @register_loss(name)
        def scaled_mse(student, teacher, *, scale: float = 1.0, mask=None):
            return scale * hidden_mse(student, teacher, mask=mask)

        assert LOSSES.get(name) is scaled_mse
        student = make_student(32).eval()
        distiller = Distiller(teacher, student, [Match("hidden.1", loss=name, args={"scale": 3.0})])
        data = batch()
        teacher_features, student_features = raw_features(distiller, data)
        expected = 3.0 * hidden_mse(student_features.hidden[1], teacher_features.hidden[1], mask=data["attention_mask"])
        torch.testing.assert_close(distiller(data).parts[f"{name}[hidden.1]"], expected)
    finally:
        LOSSES._items.pop(name, None)


def half_kl(student, teacher, *, temperature: float = 1.0):
    """Used by name as '<this module>:half_kl'."""
    return 0.5 * kl(student, teacher, temperature=temperature)


def test_user_loss_by_import_string(teacher):
    student = make_student(32).eval()
    spec = f"{__name__}:half_kl"
    distiller = Distiller(teacher, student, [Match("logits", loss=spec, args={"temperature": 2.0})])
    data = batch()
    teacher_features, student_features = raw_features(distiller, data)
    expected = 0.5 * kl(student_features.logits, teacher_features.logits, temperature=2.0)
    torch.testing.assert_close(distiller(data).parts["half_kl[logits]"], expected)
    with pytest.raises(ConfigError, match=r"module '.*' has no attribute 'nope'"):
        Distiller(teacher, student, [Match("logits", loss=f"{__name__}:nope")])
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_module_kd'"):
        Distiller(teacher, student, [Match("logits", loss="no_such_module_kd:fn")])


def test_a_loss_may_read_whole_features_for_a_cls_loss(teacher):
    """A [CLS]/pooler loss without any trick: the loss reads what it wants from the features."""
    received = {}

    def cls_pooled_mse(student, teacher, *, student_features, teacher_features, mask=None):
        received.update(student=student_features, teacher=teacher_features, mask=mask)
        student_cls = student_features.hidden[-1][:, 0]
        teacher_cls = teacher_features.hidden[-1][:, 0]
        return (student_cls - teacher_cls).square().mean() + (student - teacher).square().mean()

    student = make_student(32).eval()
    distiller = Distiller(teacher, student, [Match("pooled", loss=cls_pooled_mse), Match("hidden.-1")])
    data = batch()
    out = distiller(data)
    assert received["student"].pooled.shape == (3, 32)  # the classifier's pooler, hooked
    assert received["mask"] is data["attention_mask"]
    teacher_features, student_features = raw_features(distiller, data)
    expected = ((student_features.hidden[2][:, 0] - teacher_features.hidden[2][:, 0]).square().mean()
                + (student_features.pooled - teacher_features.pooled).square().mean())
    torch.testing.assert_close(out.parts["cls_pooled_mse[pooled]"], expected)


def test_a_loss_declaring_teacher_mask_gets_the_teachers_own_mask(teacher):
    """Student and teacher tokenized apart (``student_inputs``): ``mask`` is the student's, ``teacher_mask``
    the teacher's, so a cross-tokenizer loss (``uld``) can pair the valid tokens of each."""
    received = {}

    def mean_gap(student, teacher, *, mask=None, teacher_mask=None):
        received.update(mask=mask, teacher_mask=teacher_mask)
        return student.mean() - teacher.mean()

    distiller = Distiller(teacher, make_student(32).eval(), [Match("hidden.-1", loss=mean_gap)])
    data = batch()
    own = token_batch(batch=3, length=5, seed=9, labels=None)
    distiller({**data, "student_inputs": own})
    assert received["teacher_mask"] is data["attention_mask"]
    assert torch.equal(received["mask"], own["attention_mask"])


def test_teacher_cache_in_the_batch_replaces_the_teacher_forward(teacher):
    student = make_student(32).eval()
    distiller = Distiller(teacher, student, [Match("logits", loss="kl")])
    data = batch()
    cached = distiller.teacher_features(data)["teacher"].detach_to()
    calls = []
    teacher.register_forward_pre_hook(lambda *_: calls.append(1))
    out = distiller({**data, "teacher_features": cached})
    assert calls == []
    torch.testing.assert_close(out.loss, kl(distiller.student_features(data).logits, cached.logits))


def test_student_inputs_feed_the_student_its_own_tokens(teacher):
    student = make_student(32).eval()
    distiller = Distiller(teacher, student, [Match("logits", loss="kl")])
    data = batch()
    own = token_batch(batch=3, length=5, seed=9, labels=None)
    features = distiller.student_features({**data, "student_inputs": own})
    assert features.attention_mask.shape == (3, 5)
    torch.testing.assert_close(features.logits, student(**own).logits)


def test_matches_without_a_teacher_are_an_error_labels_alone_are_a_baseline():
    with pytest.raises(ConfigError, match=r"teacher: matches need a teacher model"):
        Distiller(None, make_student(32), [Match("logits", loss="kl")])
    baseline = Distiller(None, make_student(32), [], hard_label_weight=1.0)
    data = batch()
    out = baseline(data)
    assert list(out.parts) == ["hard_label"] and baseline.teachers == {}
    torch.testing.assert_close(out.loss, F.cross_entropy(baseline.student_features(data).logits, data["labels"]))


def test_student_in_bert_output_width_mismatch_is_detected_once_at_prepare(teacher):
    wide = tiny_bert(2, 32, seed=3, labels=3, cls=transformers.BertForSequenceClassification)
    distiller = Distiller(teacher, wide, [Match("hidden.1")])
    assert not distiller.prepared
    distiller(batch())
    assert distiller.prepared and distiller.plan[0].teacher_shape == (3, 7, 32)


def test_ensemble_refs_must_name_the_same_layer_in_every_teacher():
    teachers = {"deep": tiny_bert(4, 32, seed=0), "shallow": tiny_bert(2, 32, seed=1)}
    with pytest.raises(ConfigError, match=r"hidden_mse\[hidden.-1\].teacher: 'hidden.-1' names different layers "
                                          r"in the ensemble's teachers \(deep: hidden.4, shallow: hidden.2\)"):
        Distiller(teachers, make_student(32), [Match("hidden.-1", teacher_name="ensemble")])
    ok = Distiller(teachers, make_student(32), [Match("hidden.2", "hidden.-1", teacher_name="ensemble")])
    assert str(ok.bound[0].teacher_refs[0]) == "hidden.2"


def test_an_ensemble_loss_reading_teacher_features_gets_every_teacher():
    teachers = {"a": tiny_bert(2, 32, seed=0, labels=3), "b": tiny_bert(2, 32, seed=1, labels=3)}
    received = {}

    def probe(student, teacher, *, teacher_features):
        received.update(teacher_features)
        return (student - teacher).square().mean()

    distiller = Distiller(teachers, make_student(32), [Match("logits", loss=probe, teacher_name="ensemble")])
    distiller(batch())
    assert set(received) == {"a", "b"} and received["a"].logits.shape == (3, 3)
