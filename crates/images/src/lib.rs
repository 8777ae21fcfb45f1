//! The container images stowage ships, named once: the registry, one image per Dockerfile
//! target (`stowage-<target>`), and one tag, the workspace version. The orchestrator takes its
//! default restore-helper image from here; the kustomize `images:`, the restore-helper
//! ConfigMap and the documented `docker build` commands are checked against it by the
//! kustomize test, so a cluster is never told to pull an image no build produces.

use std::fmt;

/// Where the images are published.
pub const REGISTRY: &str = "ghcr.io/stowage";

/// The tag of every image of this release: the workspace version, without a `v`, as the
/// build commands tag them.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One image, built by the Dockerfile stage of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Image {
    Orchestrator,
    RepoManager,
    VolumeAgent,
    RestoreHelper,
}

impl Image {
    pub const ALL: [Image; 4] = [
        Image::Orchestrator,
        Image::RepoManager,
        Image::VolumeAgent,
        Image::RestoreHelper,
    ];

    /// The Dockerfile stage (`docker build --target`) that builds it.
    pub fn target(self) -> &'static str {
        match self {
            Image::Orchestrator => "orchestrator",
            Image::RepoManager => "repo-manager",
            Image::VolumeAgent => "volume-agent",
            Image::RestoreHelper => "restore-helper",
        }
    }

    /// The image's name, also the name of the binary it runs.
    pub fn name(self) -> &'static str {
        match self {
            Image::Orchestrator => "stowage-orchestrator",
            Image::RepoManager => "stowage-repo-manager",
            Image::VolumeAgent => "stowage-volume-agent",
            Image::RestoreHelper => "stowage-restore-helper",
        }
    }

    /// The image without a tag: `ghcr.io/stowage/stowage-restore-helper`.
    pub fn repository(self) -> String {
        format!("{REGISTRY}/{}", self.name())
    }

    /// The image of this release: `ghcr.io/stowage/stowage-restore-helper:0.1.0`.
    pub fn reference(self) -> String {
        format!("{}:{VERSION}", self.repository())
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `image` with `tag` when it names neither a tag nor a digest. A registry port
/// (`host:5000/helper`) is not a tag: only the last path segment is looked at.
pub fn with_default_tag(image: &str, tag: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:{tag}")
    }
}

/// The image of the init container a restore adds to recreated pods: the restore-helper
/// ConfigMap's `image` when it names one, else `default_image` (the orchestrator's
/// `--restore-helper-image`); either gets this release's tag when it has none, so the helper
/// matches the orchestrator that runs the restore.
pub fn restore_helper_image(configured: Option<&str>, default_image: &str) -> String {
    let image = configured
        .map(str::trim)
        .filter(|image| !image.is_empty())
        .unwrap_or(default_image);
    with_default_tag(image, VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_after_their_target_in_the_registry_with_the_workspace_version() {
        assert_eq!(VERSION, "0.1.0", "the workspace version, no `v`");
        assert_eq!(
            Image::RestoreHelper.reference(),
            "ghcr.io/stowage/stowage-restore-helper:0.1.0"
        );
        for image in Image::ALL {
            assert_eq!(image.name(), format!("stowage-{}", image.target()));
        }
    }

    #[test]
    fn untagged_images_get_the_version_tag() {
        assert_eq!(with_default_tag("repo/helper", "1"), "repo/helper:1");
        assert_eq!(with_default_tag("repo/helper:2", "1"), "repo/helper:2");
        assert_eq!(
            with_default_tag("host:5000/helper", "1"),
            "host:5000/helper:1"
        );
        assert_eq!(
            with_default_tag("helper@sha256:ab", "1"),
            "helper@sha256:ab"
        );
    }

    #[test]
    fn the_config_map_image_wins_over_the_default_and_both_get_this_release_s_tag() {
        let default = Image::RestoreHelper.repository();
        assert_eq!(
            restore_helper_image(None, &default),
            Image::RestoreHelper.reference()
        );
        assert_eq!(
            restore_helper_image(Some(""), &default),
            Image::RestoreHelper.reference()
        );
        assert_eq!(
            restore_helper_image(Some("my.registry/helper"), &default),
            format!("my.registry/helper:{VERSION}")
        );
        assert_eq!(
            restore_helper_image(Some("my.registry/helper:7"), &default),
            "my.registry/helper:7"
        );
    }
}
