"""`llamapyz serve --ray`: the same server as N replicas on a Ray Serve cluster.

    options.py    --replicas / --autoscale / --ray-address as a `ScaleOptions` (no Ray needed)
    prefix.py     the routing keys of a request and the table that keeps a prefix on its replica (no Ray)
    replica.py    one replica's server: the usual Starlette app and engines, driven in-process (no Ray)
    router.py     the Ray Serve request router built on prefix.py
    deployment.py the Ray Serve application: a thin front and the model replicas
    launch.py     connecting to (or starting) a cluster and running the application

Only router.py, deployment.py and launch.py import Ray, and only `launch` is imported by the command line, when
--ray is given: Ray is an optional extra (`pip install 'llamapyz[ray]'`).
"""
