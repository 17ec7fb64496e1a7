"""Data layer: DomainBed-layout datasets, seeded leave-one-domain-out splits, transforms,
checks, downloads and the procedurally generated demo dataset.

Modules: `registry` (known datasets), `imagefolder` (scan + lazy image dataset), `splits`
(DomainBed's seeded in/out split), `environments` (leave-one-domain-out lists), `transforms`,
`check`, `download`, `synthetic`.
"""
