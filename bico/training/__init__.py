"""Training: the loop (:mod:`.train`), one step's pieces (:mod:`.step`), the rows it trains on
(:mod:`.examples`, :mod:`.replay`), the engines behind it (:mod:`.engine`, :mod:`.deepspeed_engine`),
ranks (:mod:`.distributed`), the run's output folder and checkpoints (:mod:`.rundir`,
:mod:`.checkpoints`) and what it reports (:mod:`.report`)."""
