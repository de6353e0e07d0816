"""OCI images as sandbox root filesystems: a content-addressed store, import, and registry pulls.

- reference.py: image references (`registry/name:tag@digest`) and digests; errors.py: the errors.
- manifest.py: indexes, manifests and configs, decoded and checked; a host-platform pick.
- unpack.py: one layer tar unpacked into a directory, refusing what could escape or surprise.
- store.py: the store under `<state>/oci/`: blobs verified by digest, each layer unpacked once,
  an image's root filesystem merged from its layers (whiteouts honoured), removal and prune.
- archive.py: `docker save` archives and OCI image layouts (a directory or a tar) imported.
- registry.py: the OCI distribution API (anonymous and bearer-token auth, resumable blobs).
- runtime.py: what a sandbox in an image sees (its mounts, Env, WorkingDir) for engine.py;
  languages.py: a language profile's tools looked up inside an image.
- service.py: ImageService, the store as the API and the sandbox service use it.

Nothing here runs untrusted code; the sandbox engine binds a merged root filesystem read-only.
"""
