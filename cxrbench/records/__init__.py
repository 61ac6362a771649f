"""Records: what a run writes and everything that reads it.

The runner writes records; reports, ``bench status`` and the paired tests read them. This
package is the one thing both sides share, so that reports never import the runner or the
methods:

* ``schema``: the typed, versioned ``CellRecord`` and ``PretrainRecord`` (and ``Cell``);
* ``layout``: where each file lives in a results folder (``ResultsFolder``);
* ``io``: atomic writes; ``provenance``: versions, machine, commit;
* ``statistics``: bootstrap intervals, DeLong and paired t tests, Holm;
* ``comparisons``: each cell against the baseline row, and the learning check against
  random initialisation, from the stored predictions.
"""
