//! Velero's `status.phase` words of a PodVolumeBackup and a PodVolumeRestore (velero.io/v1
//! `PodVolumeBackupPhase` / `PodVolumeRestorePhase` share them), and the one mapping from the
//! proto `VolumePhase`: a cancelled volume is Velero's `Canceled` in every mirror and record.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The phase of one pod volume backup or restore, as Velero spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VolumePhase {
    /// Known, not started.
    #[default]
    New,
    InProgress,
    Completed,
    Failed,
    /// Stopped on request (Velero 1.15+; one `l`, as Velero spells it).
    Canceled,
}

impl VolumePhase {
    pub const ALL: [VolumePhase; 5] = [
        VolumePhase::New,
        VolumePhase::InProgress,
        VolumePhase::Completed,
        VolumePhase::Failed,
        VolumePhase::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumePhase::New => "New",
            VolumePhase::InProgress => "InProgress",
            VolumePhase::Completed => "Completed",
            VolumePhase::Failed => "Failed",
            VolumePhase::Canceled => "Canceled",
        }
    }

    /// Reads a phase written by stowage or by any Velero version. Velero's data-mover steps
    /// before and during the run (`Accepted`, `Prepared`, `Canceling`) are still running; the
    /// British `Cancelled` is read as `Canceled`; a word no version writes is `Failed`, as a
    /// volume whose outcome cannot be known did not complete.
    pub fn parse(word: &str) -> VolumePhase {
        match word {
            "" | "New" => VolumePhase::New,
            "InProgress" | "Accepted" | "Prepared" | "Canceling" => VolumePhase::InProgress,
            "Completed" => VolumePhase::Completed,
            "Canceled" | "Cancelled" => VolumePhase::Canceled,
            _ => VolumePhase::Failed,
        }
    }

    /// Whether the volume has ended (nothing more will happen to it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Canceled
        )
    }
}

impl fmt::Display for VolumePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for VolumePhase {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VolumePhase {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = Option::<String>::deserialize(deserializer)?;
        Ok(VolumePhase::parse(word.as_deref().unwrap_or_default()))
    }
}

#[cfg(feature = "proto")]
mod proto {
    use stowage_proto::v1::VolumePhase as Proto;

    use super::VolumePhase;

    impl From<Proto> for VolumePhase {
        /// Pending and queued volumes have not started restic: Velero's `New` and `InProgress`
        /// (an agent that accepted the volume is working on it).
        fn from(phase: Proto) -> VolumePhase {
            match phase {
                Proto::Unspecified | Proto::Pending => VolumePhase::New,
                Proto::Queued | Proto::InProgress => VolumePhase::InProgress,
                Proto::Completed => VolumePhase::Completed,
                Proto::Failed => VolumePhase::Failed,
                Proto::Cancelled => VolumePhase::Canceled,
            }
        }
    }

    impl From<VolumePhase> for Proto {
        fn from(phase: VolumePhase) -> Proto {
            match phase {
                VolumePhase::New => Proto::Pending,
                VolumePhase::InProgress => Proto::InProgress,
                VolumePhase::Completed => Proto::Completed,
                VolumePhase::Failed => Proto::Failed,
                VolumePhase::Canceled => Proto::Cancelled,
            }
        }
    }

    impl VolumePhase {
        /// The Velero word of a proto `VolumePhase` field (its `i32`); an unknown number reads
        /// as unspecified.
        pub fn of_proto(phase: i32) -> VolumePhase {
            Proto::try_from(phase).unwrap_or_default().into()
        }

        /// The proto `VolumePhase` field (`i32`) of a Velero word.
        pub fn to_proto(self) -> i32 {
            Proto::from(self) as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_reads_back_as_itself() {
        for phase in VolumePhase::ALL {
            assert_eq!(VolumePhase::parse(phase.as_str()), phase);
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<VolumePhase>(&json).unwrap(), phase);
        }
    }

    #[test]
    fn velero_spellings_are_velero_words() {
        assert_eq!(VolumePhase::Canceled.as_str(), "Canceled");
        assert_eq!(VolumePhase::parse("Cancelled"), VolumePhase::Canceled);
        assert_eq!(VolumePhase::parse("Accepted"), VolumePhase::InProgress);
        assert_eq!(VolumePhase::parse("Canceling"), VolumePhase::InProgress);
        assert_eq!(VolumePhase::parse(""), VolumePhase::New);
        assert_eq!(VolumePhase::parse("Exploded"), VolumePhase::Failed);
        assert_eq!(
            serde_json::from_str::<VolumePhase>("null").unwrap(),
            VolumePhase::New
        );
        assert!(VolumePhase::Canceled.is_final());
        assert!(!VolumePhase::InProgress.is_final());
    }

    #[cfg(feature = "proto")]
    #[test]
    fn cancelled_volumes_are_canceled_in_both_directions() {
        use stowage_proto::v1::VolumePhase as Proto;
        assert_eq!(
            VolumePhase::of_proto(Proto::Cancelled as i32),
            VolumePhase::Canceled
        );
        assert_eq!(
            VolumePhase::of_proto(Proto::Queued as i32),
            VolumePhase::InProgress
        );
        assert_eq!(
            VolumePhase::of_proto(Proto::Pending as i32),
            VolumePhase::New
        );
        assert_eq!(VolumePhase::of_proto(99), VolumePhase::New);
        for phase in VolumePhase::ALL {
            assert_eq!(VolumePhase::of_proto(phase.to_proto()), phase);
        }
    }
}
