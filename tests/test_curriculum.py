import pytest

from dat_lightning.curriculum import CurriculumState, update, window_length


def run(trace, window=3, threshold=0.5, max_steps=2, start=0):
    state = CurriculumState(start)
    history = []
    for auc in trace:
        state = update(state, auc, window=window, auc_threshold=threshold, max_steps=max_steps)
        history.append((state.steps, state.window))
    return history


def test_window_length_is_ceil():
    assert window_length(1000, 128) == 8
    assert window_length(1000, 100) == 10
    with pytest.raises(ValueError):
        window_length(1000, 0)


def test_no_increase_before_window_is_full():
    assert [s for s, _ in run([0.9, 0.9])] == [0, 0]


def test_increase_when_full_window_mean_reaches_threshold_then_reset():
    hist = run([0.9, 0.9, 0.9])
    assert hist[-1] == (1, ())


def test_window_slides_when_mean_is_below_threshold():
    hist = run([0.1, 0.2, 0.3, 0.9])
    assert hist[2] == (0, (0.1, 0.2, 0.3))
    # (0.2, 0.3, 0.9) has mean 0.467 < 0.5: still slides
    assert hist[3] == (0, (0.2, 0.3, 0.9))
    assert run([0.1, 0.2, 0.3, 0.9, 0.9])[-1] == (1, ())


def test_threshold_is_inclusive():
    assert run([0.5, 0.5, 0.5])[-1][0] == 1


def test_steps_capped_at_max():
    hist = run([1.0] * 12, max_steps=2)
    assert max(s for s, _ in hist) == 2
    assert hist[-1] == (2, ())


def test_state_is_not_mutated():
    s = CurriculumState(0, (0.9,))
    update(s, 0.9, window=2, auc_threshold=0.5, max_steps=3)
    assert s == CurriculumState(0, (0.9,))


def test_an_exact_tie_at_the_threshold_grows_the_chain_as_numpy_mean_does():
    """Eight AUCs of 0.8 have the mean 0.8 (numpy's mean, as the authors compute it); summed in
    order and divided they give 0.7999999999999999, which would delay T by one window."""
    state = CurriculumState(steps=0)
    for k in range(8):
        state = update(state, 0.8, window=8, auc_threshold=0.8, max_steps=5)
        assert state.steps == (1 if k == 7 else 0)
    assert sum([0.8] * 8) / 8 < 0.8  # the tie really is one that plain division misses
