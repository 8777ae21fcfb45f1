"""What a cluster's own controllers and admission do to objects after the API server stores
them, for the API emulator: the rules a whole-application restore meets.

- Garbage collection (kube-controller-manager's garbage collector): an object whose every
  ownerReference names an owner that does not exist (looked up by the reference's group, kind
  and name, in the dependent's namespace for namespaced owners, and compared by uid) is
  deleted; one that still has a live owner only loses its dangling references. An owner whose
  kind the server does not serve, or a namespaced owner of a cluster-scoped object, cannot be
  resolved and leaves the dependent alone, as the real collector does. The check runs
  `gc_delay` seconds after an object with owners is created or updated, and after one of its
  owners is deleted (background propagation, the API's default). DELETE also takes Velero's
  and kubectl's other propagation policies: `Orphan` removes the owner from its dependents'
  references at once, `Foreground` keeps the owner (deletionTimestamp, finalizer
  `foregroundDeletion`) until its dependents are gone.
- Namespace lifecycle: deleting a Namespace marks it Terminating (deletionTimestamp,
  spec.finalizers [kubernetes], status.phase Terminating; deleting it again is 409 Conflict);
  `gc_delay` seconds later every namespaced object in it is deleted and then the Namespace
  itself. Creating an object in a namespace that does not exist is 404 NotFound, in one being
  terminated 403 Forbidden (cause NamespaceTerminating), as the NamespaceLifecycle admission
  plugin answers.
- Services: create allocates spec.clusterIP/clusterIPs from the service range (10.96.0.0/12)
  unless it is `None` (headless) or the type is ExternalName; a requested address already
  allocated, or outside the range, is 422 Invalid; an update keeps the allocated address when
  it sends none and may not change it.
- Create: a positive metadata.resourceVersion is refused with the storage layer's 500 (no
  reason), as the API server does; uid and creationTimestamp are the server's and ignored.
- CustomResourceDefinitions: stored with status Established and NamesAccepted, as the
  apiextensions controllers set them as soon as the names are accepted.
- Jobs: unless spec.manualSelector is true, create generates the selector and the template's
  labels from the new uid and name (`controller-uid`, `batch.kubernetes.io/controller-uid`,
  `job-name`, `batch.kubernetes.io/job-name`) and refuses, 422 Invalid, a Job whose template
  already carries other values for them or whose selector does not select them ("`selector`
  not auto-generated"): what a Job restored verbatim, with its old uid, meets.
"""

import asyncio
import copy
import datetime
import ipaddress
import time

import kmock

import kube_validation

NAMESPACES = kmock.resource("", "v1", "namespaces")
SERVICES = kmock.resource("", "v1", "services")
JOBS = kmock.resource("batch", "v1", "jobs")
# The labels the Job strategy generates: (legacy, batch.kubernetes.io/) pairs.
JOB_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
SERVICE_RANGE = ipaddress.ip_network("10.96.0.0/12")
DEFAULT_GC_DELAY = 1.0


def meta_of(obj) -> dict:
    return (obj or {}).get("metadata") or {}


def group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in (api_version or "") else ""


def _stale_create_version(meta: dict) -> bool:
    """The storage layer refuses a create whose resourceVersion parses to a non-zero version
    (an unparseable one reads as 0 and passes, kubernetes/kubernetes#113847)."""
    try:
        return int(str(meta.get("resourceVersion") or "0")) > 0
    except ValueError:
        return False


def raw_status(code: int, message: str, reason: str = "", details=None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    }
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    return body


class Refused(Exception):
    """An answer the API server gives instead of storing: a Status body and its code."""

    def __init__(self, body: dict):
        super().__init__(body["message"])
        self.body = body


def crd_status(crd: dict) -> dict:
    """The status the apiextensions controllers give a CRD whose names are free."""
    spec = crd.get("spec") or {}
    names = copy.deepcopy(spec.get("names") or {})
    names.setdefault("singular", (names.get("kind") or "").lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    now = kube_now()
    return {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": stored,
    }


def kube_now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selects(selector: dict, labels: dict) -> bool:
    """`metav1.LabelSelectorAsSelector(selector).Matches(labels)` for the operators Jobs use."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator = requirement.get("key"), requirement.get("operator")
        values = requirement.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def generate_job_selector(job: dict) -> None:
    """The Job strategy's `generateSelector` and `ValidateGeneratedSelector` on create: labels
    the user did not set are generated, the selector gets the uid label; then the template
    must carry the new uid and name and the selector must select exactly those. Raises the
    API server's 422 for a Job that keeps another Job's (its old self's) uid."""
    spec = job.setdefault("spec", {})
    if spec.get("manualSelector") is True:
        return
    meta = meta_of(job)
    uid, name = meta.get("uid") or "", meta.get("name") or ""
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    labels = template_meta.setdefault("labels", {})
    for key in JOB_NAME_LABELS:
        labels.setdefault(key, name)
    for key in JOB_UID_LABELS:
        labels.setdefault(key, uid)
    selector = spec.setdefault("selector", {})
    selector.setdefault("matchLabels", {}).setdefault(JOB_UID_LABELS[1], uid)
    errors = []
    for key, expected in (
        (JOB_UID_LABELS[0], uid),
        (JOB_NAME_LABELS[0], name),
        (JOB_UID_LABELS[1], uid),
        (JOB_NAME_LABELS[1], name),
    ):
        if labels.get(key) != expected:
            errors.append(
                kube_validation.FieldError(
                    "spec.template.metadata.labels",
                    kube_validation.INVALID,
                    f"must be '{expected}'",
                    labels.get(key),
                )
            )
    generated = {key: uid for key in JOB_UID_LABELS}
    generated.update({key: name for key in JOB_NAME_LABELS})
    if not _selects(selector, generated):
        errors.append(
            kube_validation.FieldError(
                "spec.selector",
                kube_validation.INVALID,
                "`selector` not auto-generated",
                selector,
            )
        )
    if errors:
        status = kube_validation.invalid_status("Job", "batch", name, errors)
        print(f"422 {status['message']}", flush=True)
        raise Refused(status)


class LifecycleRules:
    """Mixed into the emulator, which provides `_objects`, `_resources`, `_buses`, `_lock`,
    `_versions` and `gc_delay`. Every method that changes objects runs under `_lock`."""

    def _lifecycle_init(self) -> None:
        # When each object is due for a garbage-collection check (monotonic seconds).
        self._gc_due = {}
        # owner uid -> keys of objects that named it when they were stored (may be stale:
        # each is checked again when due).
        self._owned_by = {}
        # namespace name -> when its content is due for deletion.
        self._terminating = {}

    # --------------------------------------------------------------- admission of a create

    def check_create(self, resource, namespace, obj: dict) -> None:
        """Raises Refused for a create the API server refuses before validation."""
        meta = meta_of(obj)
        if _stale_create_version(meta):
            raise Refused(raw_status(500, "resourceVersion should not be set on objects to be created"))
        info = self._resources[resource] if resource in self._resources else None
        if namespace and info is not None and info.namespaced:
            key = (NAMESPACES, None, namespace)
            if key not in self._objects or self._objects[key].deleted:
                raise Refused(
                    raw_status(
                        404,
                        f'namespaces "{namespace}" not found',
                        "NotFound",
                        {"name": namespace, "kind": "namespaces"},
                    )
                )
            if meta_of(self._objects[key].raw).get("deletionTimestamp"):
                raise Refused(
                    raw_status(
                        403,
                        f'{resource.plural} "{meta.get("name") or ""}" is forbidden: unable to '
                        f"create new content in namespace {namespace} because it is being terminated",
                        "Forbidden",
                        {
                            "name": meta.get("name") or "",
                            "kind": resource.plural,
                            "causes": [
                                {
                                    "reason": "NamespaceTerminating",
                                    "message": f"namespace {namespace} is being terminated",
                                    "field": "metadata.namespace",
                                }
                            ],
                        },
                    )
                )

    def prepare_create(self, resource, obj: dict) -> None:
        """Fills in what the API server assigns on create (after check_create; the object has
        its new uid)."""
        if resource == SERVICES:
            self._allocate_cluster_ip(obj)
        elif resource.group == JOBS.group and resource.plural == JOBS.plural:
            generate_job_selector(obj)
        elif resource.group == "apiextensions.k8s.io" and resource.plural == "customresourcedefinitions":
            obj["status"] = crd_status(obj)

    def prepare_update(self, resource, current: dict, updated: dict) -> None:
        """Keeps what the API server keeps across an update."""
        if resource == SERVICES:
            self._keep_cluster_ip(current, updated)

    # ------------------------------------------------------------------------- services

    def _allocated_ips(self, except_key=None) -> set:
        used = set()
        for key, obj in self._objects.items():
            if key[0] != SERVICES or obj.deleted or key == except_key:
                continue
            spec = obj.raw.get("spec") or {}
            for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                if ip and ip != "None":
                    used.add(ip)
        return used

    def _allocate_cluster_ip(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "ExternalName":
            return
        requested = spec.get("clusterIP") or ((spec.get("clusterIPs") or [None])[0])
        name = meta_of(obj).get("name") or ""
        if requested == "None":
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
        elif requested:
            try:
                address = ipaddress.ip_address(requested)
            except ValueError:
                self._invalid_service(name, requested, "must be a valid IP address")
            if address not in SERVICE_RANGE:
                self._invalid_service(
                    name,
                    requested,
                    f"failed to allocate IP {requested}: the provided IP ({requested}) is not "
                    f"in the valid range. The range of valid IPs is {SERVICE_RANGE}",
                )
            if requested in self._allocated_ips():
                self._invalid_service(
                    name,
                    requested,
                    f"failed to allocate IP {requested}: provided IP is already allocated",
                )
            spec["clusterIP"] = requested
            spec["clusterIPs"] = [requested]
        else:
            used = self._allocated_ips()
            # .0 is the network, .1 the kubernetes Service's.
            for address in SERVICE_RANGE.hosts():
                if int(address) - int(SERVICE_RANGE.network_address) >= 10 and str(address) not in used:
                    spec["clusterIP"] = str(address)
                    spec["clusterIPs"] = [str(address)]
                    break
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    def _keep_cluster_ip(self, current: dict, updated: dict) -> None:
        old = current.get("spec") or {}
        new = updated.setdefault("spec", {})
        if not old.get("clusterIP") or new.get("type", old.get("type")) == "ExternalName":
            return
        if not new.get("clusterIP"):
            new["clusterIP"] = old["clusterIP"]
            new["clusterIPs"] = list(old.get("clusterIPs") or [old["clusterIP"]])
        elif new["clusterIP"] != old["clusterIP"]:
            name = meta_of(current).get("name") or ""
            error = kube_validation.FieldError(
                "spec.clusterIPs[0]", kube_validation.INVALID, "may not change once set", [new["clusterIP"]]
            )
            raise Refused(kube_validation.invalid_status("Service", "", name, [error]))
        else:
            new.setdefault("clusterIPs", list(old.get("clusterIPs") or [old["clusterIP"]]))

    def _invalid_service(self, name: str, requested: str, detail: str):
        error = kube_validation.FieldError(
            "spec.clusterIPs", kube_validation.INVALID, detail, [requested]
        )
        raise Refused(kube_validation.invalid_status("Service", "", name, [error]))

    # ----------------------------------------------------------------- garbage collection

    def stored(self, key) -> None:
        """An object was created or updated: check its owners `gc_delay` from now."""
        if key not in self._objects or self._objects[key].deleted:
            return
        owners = meta_of(self._objects[key].raw).get("ownerReferences") or []
        for owner in owners:
            self._owned_by.setdefault(owner.get("uid"), set()).add(key)
        if owners:
            self._schedule(key)

    def _schedule(self, key, delay=None) -> None:
        due = time.monotonic() + (self.gc_delay if delay is None else delay)
        self._gc_due[key] = min(due, self._gc_due.get(key, due))

    def _kinds(self) -> dict:
        """(group, kind) -> [(resource, namespaced)] of every served resource."""
        table = {}
        for resource in list(self._resources):
            info = self._resources[resource]
            if info.kind:
                table.setdefault((resource.group, info.kind), []).append(
                    (resource, bool(info.namespaced))
                )
        return table

    def _owner(self, kinds, namespace, reference):
        """`(state, key)`: state "solid", "dangling", "deleting" (a foreground deletion waits
        for its dependents) or None when the reference cannot be resolved."""
        candidates = kinds.get((group_of(reference.get("apiVersion")), reference.get("kind")))
        if not candidates:
            return None, None
        namespaced = candidates[0][1]
        if namespaced and namespace is None:
            return None, None
        owner_namespace = namespace if namespaced else None
        for resource, _ in candidates:
            key = (resource, owner_namespace, reference.get("name"))
            if key in self._objects and not self._objects[key].deleted:
                meta = meta_of(self._objects[key].raw)
                if meta.get("uid") != reference.get("uid"):
                    return "dangling", None
                if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
                    return "deleting", key
                return "solid", key
        return "dangling", None

    def _live_dependents(self, uid):
        keys = []
        for key in list(self._owned_by.get(uid, ())):
            if key in self._objects and not self._objects[key].deleted:
                owners = meta_of(self._objects[key].raw).get("ownerReferences") or []
                if any(owner.get("uid") == uid for owner in owners):
                    keys.append(key)
        return keys

    async def _publish(self, key, kind: str, raw: dict) -> None:
        await self._buses[key[0]].put({"type": kind, "object": raw})

    async def _rewrite(self, key, change) -> None:
        """Stores a new version of `key` made by `change(copy)`, as an update would."""
        updated = copy.deepcopy(self._objects[key].raw)
        change(updated)
        updated.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        self._objects[key].delete()
        self._objects[key].create(updated)
        await self._publish(key, "MODIFIED", self._objects[key].raw)

    async def delete_stored(self, key, propagation: str = "Background") -> dict:
        """Deletes `key` as the API server does (finalizers make it a mark) and lets the
        collector see its dependents; returns what the DELETE answers."""
        obj = self._objects[key]
        raw = obj.raw
        meta = meta_of(raw)
        uid = meta.get("uid")
        if propagation == "Orphan":
            for dependent in self._live_dependents(uid):
                await self._rewrite(
                    dependent,
                    lambda o: o["metadata"].__setitem__(
                        "ownerReferences",
                        [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid],
                    ),
                )
        elif propagation == "Foreground" and self._live_dependents(uid):
            def mark(o):
                o["metadata"].setdefault("deletionTimestamp", kube_now())
                finalizers = o["metadata"].setdefault("finalizers", [])
                if FOREGROUND not in finalizers:
                    finalizers.append(FOREGROUND)

            await self._rewrite(key, mark)
            for dependent in self._live_dependents(uid):
                self._schedule(dependent)
            self._schedule(key)
            return self._objects[key].raw
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                await self._rewrite(
                    key, lambda o: o["metadata"].__setitem__("deletionTimestamp", kube_now())
                )
            return self._objects[key].raw
        obj.delete()
        await self._publish(key, "DELETED", raw)
        self.released(raw)
        return raw

    def released(self, raw: dict) -> None:
        """An object is gone: its dependents are due for a check."""
        for dependent in self._owned_by.pop(meta_of(raw).get("uid"), ()):
            self._schedule(dependent)

    async def _collect(self, key) -> None:
        if key not in self._objects or self._objects[key].deleted:
            return
        raw = self._objects[key].raw
        meta = meta_of(raw)
        if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
            # A foreground deletion ends when its dependents are gone.
            if self._live_dependents(meta.get("uid")):
                self._schedule(key)
                return
            await self._rewrite(
                key,
                lambda o: o["metadata"].__setitem__(
                    "finalizers", [f for f in o["metadata"]["finalizers"] if f != FOREGROUND]
                ),
            )
            if not self._objects[key].raw["metadata"]["finalizers"]:
                raw = self._objects[key].raw
                self._objects[key].delete()
                await self._publish(key, "DELETED", raw)
                self.released(raw)
            return
        owners = meta.get("ownerReferences") or []
        if not owners or meta.get("deletionTimestamp"):
            return
        kinds = self._kinds()
        states = [self._owner(kinds, key[1], owner) for owner in owners]
        if any(state is None for state, _ in states):
            return  # an owner the collector cannot resolve: it leaves the object alone
        if any(state == "solid" for state, _ in states):
            dangling = {
                owner.get("uid")
                for owner, (state, _) in zip(owners, states)
                if state == "dangling"
            }
            if dangling:
                print(f"gc: {key[0].plural} {key[1]}/{key[2]}: dropping dangling owners {sorted(dangling)}", flush=True)
                await self._rewrite(
                    key,
                    lambda o: o["metadata"].__setitem__(
                        "ownerReferences",
                        [r for r in o["metadata"]["ownerReferences"] if r.get("uid") not in dangling],
                    ),
                )
            return
        print(f"gc: deleting {key[0].plural} {key[1]}/{key[2]}: no owner of {[o.get('uid') for o in owners]} exists", flush=True)
        foreground = any(state == "deleting" for state, _ in states)
        await self.delete_stored(key, "Foreground" if foreground else "Background")
        for state, owner_key in states:
            if state == "deleting":
                self._schedule(owner_key, 0)

    # -------------------------------------------------------------------- namespaces

    async def delete_namespace(self, key) -> dict:
        raw = self._objects[key].raw
        if meta_of(raw).get("deletionTimestamp"):
            name = key[2]
            raise Refused(
                raw_status(
                    409,
                    f'Operation cannot be fulfilled on namespaces "{name}": The system is '
                    "ensuring all content is removed from this namespace.  Upon completion, this "
                    "namespace will automatically be purged by the system.",
                    "Conflict",
                    {"name": name, "kind": "namespaces"},
                )
            )

        def terminate(o):
            o["metadata"]["deletionTimestamp"] = kube_now()
            o.setdefault("spec", {})["finalizers"] = ["kubernetes"]
            o.setdefault("status", {})["phase"] = "Terminating"

        await self._rewrite(key, terminate)
        self._terminating[key[2]] = time.monotonic() + self.gc_delay
        return self._objects[key].raw

    async def _finish_namespace(self, name: str) -> None:
        left = 0
        for key in [k for k in list(self._objects) if k[1] == name]:
            if key[0] == NAMESPACES or self._objects[key].deleted:
                continue
            if not meta_of(self._objects[key].raw).get("deletionTimestamp"):
                await self.delete_stored(key)
            if key in self._objects and not self._objects[key].deleted:
                left += 1  # waits for its finalizers
        key = (NAMESPACES, None, name)
        if left:
            self._terminating[name] = time.monotonic() + self.gc_delay
        elif key in self._objects and not self._objects[key].deleted:
            if meta_of(self._objects[key].raw).get("finalizers"):
                self._terminating[name] = time.monotonic() + self.gc_delay
                return
            raw = self._objects[key].raw
            self._objects[key].delete()
            await self._publish(key, "DELETED", raw)
            self.released(raw)
            print(f"namespace {name}: deleted with its content", flush=True)

    # ---------------------------------------------------------------------- the loop

    async def run_controllers(self) -> None:
        """The collector and the namespace controller; runs until cancelled."""
        tick = max(0.01, min(0.05, self.gc_delay / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if not any(t <= now for t in self._gc_due.values()) and not any(
                t <= now for t in self._terminating.values()
            ):
                continue
            async with self._lock:
                for name in [n for n, t in self._terminating.items() if t <= now]:
                    del self._terminating[name]
                    await self._finish_namespace(name)
                for key in [k for k, t in self._gc_due.items() if t <= now]:
                    del self._gc_due[key]
                    await self._collect(key)
