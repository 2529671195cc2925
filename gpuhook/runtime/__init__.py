"""When gpuhook decides and which consumer applies the Plan: the pipeline (host facts and the
inventory into decide/), the prestart hook and its fast path, the runtime shim and its spec edit.
Empty on purpose: the fast path imports only what it names."""
