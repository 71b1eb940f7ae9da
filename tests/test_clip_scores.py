"""CLIP-Dissect's scores equal numpy transcriptions of the published formulas."""
import numpy as np
import pytest

from jaxdissect.dissect import clip_scores


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))


def numpy_soft_wpmi(acts, sims, top_k=100, a=10.0, lam=1.0, p_start=0.998, p_end=0.97, min_prob=1e-7, soft=True):
    """Unit by unit, image by image, in float64: the paper's soft-WPMI (soft=False: WPMI)."""
    acts, sims = np.asarray(acts, np.float64), np.asarray(sims, np.float64)
    probs = _softmax(a * sims, axis=1)  # p(phrase | image), over phrases
    n_units, n_phrases = acts.shape[1], sims.shape[1]
    log_given = np.zeros((n_units, n_phrases))
    for u in range(n_units):
        top = np.argsort(-acts[:, u], kind="stable")[:top_k]
        for j, img in enumerate(top):
            if soft:
                p_in = p_start - j / top_k * (p_start - p_end)
                log_given[u] += np.log(1 + p_in * (probs[img] - 1) + min_prob)
            else:
                log_given[u] += np.log(probs[img] + min_prob)
    log_p = _logsumexp(log_given, axis=0) - np.log(n_units)
    return log_given - lam * log_p


def numpy_ranks(v):
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def numpy_pearson(x, y):
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    acts = rng.gamma(2.0, 1.0, (300, 12)).astype(np.float32)
    feats_i = rng.normal(size=(300, 16))
    feats_t = rng.normal(size=(40, 16))
    sims = (feats_i / np.linalg.norm(feats_i, axis=1, keepdims=True)) @ (feats_t / np.linalg.norm(feats_t, axis=1, keepdims=True)).T
    return acts, sims.astype(np.float32)


def test_soft_wpmi_equals_the_published_formula(inputs):
    acts, sims = inputs
    got = np.asarray(clip_scores.soft_wpmi(acts, sims))
    want = numpy_soft_wpmi(acts, sims)
    assert got.shape == (12, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_soft_wpmi_other_parameters(inputs):
    acts, sims = inputs
    got = np.asarray(clip_scores.soft_wpmi(acts, sims, top_k=17, a=3.0, lam=0.5, p_start=0.9, p_end=0.5))
    want = numpy_soft_wpmi(acts, sims, top_k=17, a=3.0, lam=0.5, p_start=0.9, p_end=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wpmi_equals_the_published_formula(inputs):
    acts, sims = inputs
    got = np.asarray(clip_scores.wpmi(acts, sims))
    want = numpy_soft_wpmi(acts, sims, top_k=28, a=2.0, lam=0.6, soft=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cosine_and_cosine_cubed(inputs):
    acts, sims = inputs
    a, s = acts.astype(np.float64), sims.astype(np.float64)
    want = np.array([[a[:, u] @ s[:, c] / np.linalg.norm(a[:, u]) / np.linalg.norm(s[:, c]) for c in range(40)]
                     for u in range(12)])
    np.testing.assert_allclose(np.asarray(clip_scores.cosine(acts, sims)), want, rtol=1e-4, atol=1e-5)
    ac, sc = (a - a.mean(0)) ** 3, (s - s.mean(0)) ** 3
    want3 = np.array([[ac[:, u] @ sc[:, c] / max(np.linalg.norm(ac[:, u]), 1e-3) / max(np.linalg.norm(sc[:, c]), 1e-3)
                       for c in range(40)] for u in range(12)])
    np.testing.assert_allclose(np.asarray(clip_scores.cosine_cubed(acts, sims)), want3, rtol=1e-3, atol=1e-5)


def test_spearman_with_ties(inputs):
    acts, sims = inputs
    acts = acts.copy()
    acts[acts < 1.0] = 0.0  # a ReLU-like unit: many tied zeros
    acts[:, 3] = 0.0  # a dead unit: constant profile
    got = np.asarray(clip_scores.spearman(acts, sims))
    for u in range(12):
        for c in range(0, 40, 7):
            want = 0.0 if u == 3 else numpy_pearson(numpy_ranks(acts[:, u]), numpy_ranks(sims[:, c]))
            assert got[u, c] == pytest.approx(want, abs=1e-5)


def test_average_ranks_hand_checked():
    x = np.array([[3.0], [1.0], [3.0], [2.0], [3.0]])
    np.testing.assert_allclose(np.asarray(clip_scores.average_ranks(x))[:, 0], [4, 1, 4, 2, 4])


def test_soft_wpmi_finds_the_planted_phrase():
    # each unit fires on the images of one phrase: its label must be that phrase
    rng = np.random.default_rng(1)
    n, c = 400, 10
    truth = rng.integers(0, c, n)
    sims = rng.normal(0.1, 0.02, (n, c))
    sims[np.arange(n), truth] += 0.1
    acts = np.stack([(truth == k) * rng.uniform(1, 2, n) + rng.uniform(0, 0.3, n) for k in range(c)], axis=1)
    for method in clip_scores.SCORE_FUNCTIONS:
        scores = np.asarray(clip_scores.unit_phrase_scores(acts, sims, method, **({"top_k": 30} if "wpmi" in method else {})))
        assert (scores.argmax(1) == np.arange(c)).all(), method


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same probe images"):
        clip_scores.cosine(np.zeros((5, 2)), np.zeros((6, 3)))
    with pytest.raises(ValueError, match="top_k=100"):
        clip_scores.soft_wpmi(np.zeros((50, 2)), np.zeros((50, 3)))
    with pytest.raises(ValueError, match="unknown similarity method 'iou'"):
        clip_scores.unit_phrase_scores(np.zeros((5, 2)), np.zeros((5, 3)), "iou")
