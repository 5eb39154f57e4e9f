"""Acceptance metrics from decoding traces (conventions: README, "Conventions").

A verify step's acceptance length is accepted + 1 (the target's own token counts). tau is the
mean over responses of each response's mean (macro; each response's mean is kept too, so two
drafters evaluated on the same prompts compare pairwise); the token-weighted variant pools all
steps.
Per-position acceptance: `reach_rate[j]` = share of steps whose proposal j was accepted (j = 1 is
the first proposal); `conditional_rate[j]` = the same among steps that got as far as j.
"""

import numpy as np


def acceptance_lengths(trace) -> list[np.ndarray]:
  """Per response, the acceptance length of each verify step it took."""
  accepted = np.asarray(trace.accepted_BxN)
  steps = np.asarray(trace.num_steps_B)
  return [accepted[b, :steps[b]] + 1 for b in range(len(steps))]


def summarize(lengths: list[np.ndarray], block_size: int) -> dict:
  """tau (macro and token-weighted), per-position rates and the histogram of lengths."""
  lengths = [l for l in lengths if len(l)]
  if not lengths:
    return {"tau": float("nan"), "tau_token_weighted": float("nan"), "tau_per_response": [],
            "num_steps": 0, "reach_rate": [], "conditional_rate": [],
            "length_histogram": [0] * block_size}
  pooled = np.concatenate(lengths)
  accepted = pooled - 1
  reach = [float(np.mean(accepted >= j)) for j in range(1, block_size)]
  conditional = [float(np.mean(accepted[accepted >= j - 1] >= j)) if np.any(accepted >= j - 1)
                 else float("nan") for j in range(1, block_size)]
  per_response = [float(l.mean()) for l in lengths]
  return {
      "tau": float(np.mean(per_response)),
      "tau_token_weighted": float(pooled.mean()),
      "tau_per_response": per_response,
      "num_steps": int(len(pooled)),
      "reach_rate": reach,
      "conditional_rate": conditional,
      # Index i counts steps with acceptance length i + 1.
      "length_histogram": np.bincount(pooled - 1, minlength=block_size)[:block_size].tolist(),
  }


def speedup(ar_seconds_per_token: list[float], spec_seconds_per_token: list[float]) -> float:
  """Mean time per output token of autoregressive over speculative decoding (per prompt)."""
  return float(np.mean(ar_seconds_per_token) / np.mean(spec_seconds_per_token))


def paired_bootstrap(new: dict[str, list[float]], old: dict[str, list[float]],
                     num_samples: int = 10_000, seed: int = 0) -> dict:
  """Macro tau of two drafters measured on the same prompts (set name -> each prompt's tau, in
  the same order for both): their difference and ratio with 95% intervals from resampling the
  prompts of each set with replacement, both drafters' taus of a prompt together."""
  if new.keys() != old.keys() or any(len(new[s]) != len(old[s]) or not new[s] for s in new):
    raise ValueError("paired_bootstrap needs the same non-empty prompt sets for both drafters")
  rng = np.random.default_rng(seed)
  new_sum, old_sum = np.zeros(num_samples), np.zeros(num_samples)
  for name in new:
    a, b = np.asarray(new[name]), np.asarray(old[name])
    picks = rng.integers(0, len(a), (num_samples, len(a)))
    new_sum += a[picks].mean(1)
    old_sum += b[picks].mean(1)
  new_tau = float(np.mean([np.mean(v) for v in new.values()]))
  old_tau = float(np.mean([np.mean(v) for v in old.values()]))
  interval = lambda x: [float(q) for q in np.percentile(x, [2.5, 97.5])]
  return {"new_tau": new_tau, "old_tau": old_tau, "difference": new_tau - old_tau,
          "difference_ci95": interval((new_sum - old_sum) / len(new)),
          "ratio": new_tau / old_tau, "ratio_ci95": interval(new_sum / old_sum)}
