"""Interpretability and steering of CoCoMix students (paper §3.2 "Interpretability and steerability", §3.3c).

    labels.py       names for SAE latents, from `cocomix describe-concepts` output (concepts.json)
    inspect.py      per-token top predicted concepts of a CoCoMix student: terminal table and a self-contained page
    steer.py        generation with chosen concept logits × α (student) or SAE latents × α (teacher)
    steer_eval.py   the steering metric: activation rate of the steered concept in continuations under the
                    teacher + SAE, and the fluency cost (teacher NLL per generated token), against α
    compression.py  the compression layer's per-concept row norms (paper §3.3c: fraction below 1e-2)
"""
