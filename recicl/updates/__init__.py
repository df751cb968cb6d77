"""The update loop: keep the served model current between (and by) re-tunes.

* :mod:`~recicl.updates.monitor` reads the feedback log and decides ok / re-tune / roll back.
* :mod:`~recicl.updates.retune` re-tunes the champion warm on the log plus what serving stored,
  evaluates it on the newest period and enters it as a shadow or split candidate.

It composes training, evaluation, promotion and the interaction store; nothing below imports it.
"""
