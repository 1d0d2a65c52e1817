"""Training: the loop (:mod:`.train`), the engines behind it (:mod:`.engine`, :mod:`.deepspeed_engine`),
ranks (:mod:`.distributed`), the run's output folder (:mod:`.rundir`) and what it reports (:mod:`.report`)."""
