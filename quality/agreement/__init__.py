"""Inter-annotator agreement: categorical statistics, spatial overlap, consensus models.

Which to use
------------
* Two raters, nominal or ordinal labels: :func:`~quality.agreement.categorical.cohen_kappa`
  (weighted for ordinal), :func:`~quality.agreement.categorical.scott_pi`.
* Many raters, every item rated by the same number: :func:`~quality.agreement.categorical.fleiss_kappa`.
* Many raters with missing ratings, any level of measurement:
  :func:`~quality.agreement.categorical.krippendorff_alpha`.
* Skewed class prevalence (the kappa paradox): :func:`~quality.agreement.categorical.gwet_ac1`.
* Boxes and masks: :mod:`quality.agreement.spatial`.
* A consensus label with per-annotator skill: :class:`~quality.agreement.consensus.DawidSkene`;
  for masks, :class:`~quality.agreement.consensus.STAPLE`.

All label inputs follow one contract (:mod:`quality.agreement.labels`): a long DataFrame with
columns ``item_id, annotator_id, label``.
"""
