"""Patient-data protection: the PS3.15 de-identification profile, the PHI audit, cleaning.

Which function for which job
----------------------------
- :func:`phi_audit` (a dataset of the DB) and :func:`phi_audit_store` (a folder or remote
  store): which images still carry identifying attributes, private tags or burned-in
  annotation. They read headers only and **never return a value**: counts per attribute,
  example SOP Instance UIDs, and per image the attribute keywords. ``quality phi-audit``.
- :func:`deidentify_file` / :func:`deidentify_folder`: a cleaned copy made with the profile
  (``quality deidentify SRC DST``).
- :func:`pseudonym`: a stable, salted pseudonym for a code (``Doctor-7f3a2b``), shown to roles
  that must not see who an annotator is.

The profile
-----------
:data:`BASIC_PROFILE` is the attribute list of the *Basic Application Level
Confidentiality Profile*: DICOM PS3.15 (2024 editions), Annex E, Table E.1-1, with each
attribute's action code:

``X`` remove; ``Z`` replace with a zero-length value (or a dummy consistent with the VR);
``D`` replace with a non-zero-length dummy of the VR; ``U`` replace a UID by another UID,
consistently within the set of instances; combinations (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``) leave the choice to what the IOD requires. Private attributes (odd
groups), Curve Data ``(50xx,xxxx)`` and Overlay Data/Comments ``(60xx,3000/4000)`` are
``X`` as well.

The workbench applies three of the profile's options (:data:`OPTIONS`), the same ones
:mod:`quality.dicom` documents, because its analyses need them and they do not identify a
patient on their own:

* *Retain Longitudinal Temporal Information with Full Dates* (``L`` in the table): dates and
  times of the study, series and acquisition are kept (drift is measured over them);
* *Retain Patient Characteristics* (``P``): age, sex, size, weight, ... are kept;
* *Retain UIDs*, for the audit only: Study/Series/SOP Instance UIDs are the keys of the DB,
  so the audit reports them as **original UIDs** (information, not a failure: the demo keeps
  its UIDs and a pseudonymised store may too). :func:`deidentify_file` does replace them,
  deterministically, so the cleaned copy can be joined back to nothing but itself.

:func:`quality.dicom.is_phi`, which masks the header viewer and filters the header JSON that
ingest stores, uses :data:`PHI_KEYWORDS` (the attributes the profile does not keep under
these options) together with its own curated list, which is a little stricter (it also
masks e.g. EthnicGroup and SmokingStatus, which *Retain Patient Characteristics* would keep,
and every person name): masking more on a screen costs nothing.

Burned-in annotation
--------------------
Identifying text may be burned into the pixels, which no header cleaning removes.
BurnedInAnnotation (0028,0301) = ``YES`` is flagged (a failure of the audit); its absence on
modalities that often burn text in (ultrasound, secondary capture, X-ray angiography,
endoscopy: :data:`BURN_IN_MODALITIES`) is reported as *unknown* (information). Cleaning
keeps the attribute as it is: it is a fact about the pixels.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import struct
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.db.queries import _db_errors, newest_version_id, resolve_dataset
from quality.db.schema import Dataset as DatasetRow
from quality.db.schema import DatasetItem, DatasetVersion, Image
from quality.errors import DicomReadError, PhiInputError

if TYPE_CHECKING:
    from quality.agreement.summary import AgreementSummary

__all__ = [
    "BASIC_PROFILE",
    "BURN_IN_MODALITIES",
    "DUMMY_VALUES",
    "OPTIONS",
    "PHI_KEYWORDS",
    "PROFILE_REFERENCE",
    "UID_KEYWORDS",
    "DeidentifySummary",
    "PhiAuditReport",
    "ProfileAttribute",
    "deidentify_file",
    "deidentify_folder",
    "phi_audit",
    "phi_audit_store",
    "profile_action",
    "pseudonym",
    "pseudonymise_agreement",
]

PROFILE_REFERENCE = (
    "DICOM PS3.15 (2024), Annex E, Table E.1-1: Application Level Confidentiality Profile "
    "Attributes, column 'Basic Prof.'"
)
"""Where :data:`BASIC_PROFILE` comes from."""

OPTIONS: tuple[str, ...] = (
    "Retain Longitudinal Temporal Information with Full Dates Option",
    "Retain Patient Characteristics Option",
)
"""Profile options the workbench applies when auditing and cleaning (module docs)."""

# PS3.16 CID 7050 "De-identification Method": recorded in DeidentificationMethodCodeSequence.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)

BURN_IN_MODALITIES: frozenset[str] = frozenset({"US", "SC", "XA", "ES"})
"""Modalities that often carry text burned into the pixels (also any Secondary Capture SOP
class); a missing BurnedInAnnotation there is reported as *unknown*."""

_SC_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage family

# tag action option keyword, one line per attribute of Table E.1-1 (sorted by tag). option:
# L = kept under Retain Longitudinal Temporal Information with Full Dates, P = kept under
# Retain Patient Characteristics, - = none of the applied options keeps it.
_TABLE = """
00001000 X       - AffectedSOPInstanceUID
00001001 U       - RequestedSOPInstanceUID
00020003 U       - MediaStorageSOPInstanceUID
00041511 U       - ReferencedSOPInstanceUIDInFile
00080014 U       - InstanceCreatorUID
00080015 X       L InstanceCoercionDateTime
00080018 U       - SOPInstanceUID
00080020 Z       L StudyDate
00080021 X/D     L SeriesDate
00080022 X/Z     L AcquisitionDate
00080023 Z/D     L ContentDate
00080024 X       L OverlayDate
00080025 X       L CurveDate
0008002A X/Z/D   L AcquisitionDateTime
00080030 Z       L StudyTime
00080031 X/D     L SeriesTime
00080032 X/Z     L AcquisitionTime
00080033 Z/D     L ContentTime
00080034 X       L OverlayTime
00080035 X       L CurveTime
00080050 Z       - AccessionNumber
00080058 U       - FailedSOPInstanceUIDList
00080080 X/Z/D   - InstitutionName
00080081 X       - InstitutionAddress
00080082 X/Z/D   - InstitutionCodeSequence
00080090 Z       - ReferringPhysicianName
00080092 X       - ReferringPhysicianAddress
00080094 X       - ReferringPhysicianTelephoneNumbers
00080096 X       - ReferringPhysicianIdentificationSequence
0008009C Z       - ConsultingPhysicianName
0008009D X       - ConsultingPhysicianIdentificationSequence
00080201 X       L TimezoneOffsetFromUTC
00081010 X/Z/D   - StationName
00081030 X       - StudyDescription
0008103E X       - SeriesDescription
00081040 X       - InstitutionalDepartmentName
00081041 X       - InstitutionalDepartmentTypeCodeSequence
00081048 X       - PhysiciansOfRecord
00081049 X       - PhysiciansOfRecordIdentificationSequence
00081050 X       - PerformingPhysicianName
00081052 X       - PerformingPhysicianIdentificationSequence
00081060 X       - NameOfPhysiciansReadingStudy
00081062 X       - PhysiciansReadingStudyIdentificationSequence
00081070 X/Z/D   - OperatorsName
00081072 X/D     - OperatorIdentificationSequence
00081080 X       - AdmittingDiagnosesDescription
00081084 X       - AdmittingDiagnosesCodeSequence
00081110 X/Z     - ReferencedStudySequence
00081111 X/Z/D   - ReferencedPerformedProcedureStepSequence
00081120 X       - ReferencedPatientSequence
00081140 X/Z/U*  - ReferencedImageSequence
00081155 U       - ReferencedSOPInstanceUID
00081195 U       - TransactionUID
00082111 X       - DerivationDescription
00082112 X/Z/U*  - SourceImageSequence
00083010 U       - IrradiationEventUID
00084000 X       - IdentifyingComments
00100010 Z       - PatientName
00100020 Z       - PatientID
00100021 X       - IssuerOfPatientID
00100030 Z       - PatientBirthDate
00100032 X       - PatientBirthTime
00100040 Z       P PatientSex
00100050 X       - PatientInsurancePlanCodeSequence
00100101 X       - PatientPrimaryLanguageCodeSequence
00100102 X       - PatientPrimaryLanguageModifierCodeSequence
00101000 X       - OtherPatientIDs
00101001 X       - OtherPatientNames
00101002 X       - OtherPatientIDsSequence
00101005 X       - PatientBirthName
00101010 X       P PatientAge
00101020 X       P PatientSize
00101030 X       P PatientWeight
00101040 X       - PatientAddress
00101050 X       - InsurancePlanIdentification
00101060 X       - PatientMotherBirthName
00101080 X       - MilitaryRank
00101081 X       - BranchOfService
00101090 X       - MedicalRecordLocator
00101100 X       - ReferencedPatientPhotoSequence
00102000 X       - MedicalAlerts
00102110 X       - Allergies
00102150 X       - CountryOfResidence
00102152 X       - RegionOfResidence
00102154 X       - PatientTelephoneNumbers
00102155 X       - PatientTelecomInformation
00102160 X       P EthnicGroup
00102180 X       - Occupation
001021A0 X       P SmokingStatus
001021B0 X       - AdditionalPatientHistory
001021C0 X       P PregnancyStatus
001021D0 X       L LastMenstrualDate
001021F0 X       - PatientReligiousPreference
00102203 X/Z     P PatientSexNeutered
00102297 X       - ResponsiblePerson
00102299 X       - ResponsibleOrganization
00104000 X       - PatientComments
00120010 D       - ClinicalTrialSponsorName
00120020 D       - ClinicalTrialProtocolID
00120021 Z       - ClinicalTrialProtocolName
00120030 Z       - ClinicalTrialSiteID
00120031 Z       - ClinicalTrialSiteName
00120040 D       - ClinicalTrialSubjectID
00120042 D       - ClinicalTrialSubjectReadingID
00120050 Z       - ClinicalTrialTimePointID
00120051 X       - ClinicalTrialTimePointDescription
00120060 Z       - ClinicalTrialCoordinatingCenterName
00120071 X       - ClinicalTrialSeriesID
00120072 X       - ClinicalTrialSeriesDescription
00120081 D       - ClinicalTrialProtocolEthicsCommitteeName
00120082 X       - ClinicalTrialProtocolEthicsCommitteeApprovalNumber
0016002B X       - MakerNote
0016004B X       - DeviceSettingDescription
0016004D X       - CameraOwnerName
0016004E X       - LensSpecification
0016004F X       - LensMake
00160050 X       - LensModel
00160051 X       - LensSerialNumber
00160070 X       - GPSVersionID
00160071 X       - GPSLatitudeRef
00160072 X       - GPSLatitude
00160073 X       - GPSLongitudeRef
00160074 X       - GPSLongitude
00160075 X       - GPSAltitudeRef
00160076 X       - GPSAltitude
00160077 X       - GPSTimeStamp
00160078 X       - GPSSatellites
00160079 X       - GPSStatus
0016007A X       - GPSMeasureMode
0016007B X       - GPSDOP
0016007C X       - GPSSpeedRef
0016007D X       - GPSSpeed
0016007E X       - GPSTrackRef
0016007F X       - GPSTrack
00160080 X       - GPSImgDirectionRef
00160081 X       - GPSImgDirection
00160082 X       - GPSMapDatum
00160083 X       - GPSDestLatitudeRef
00160084 X       - GPSDestLatitude
00160085 X       - GPSDestLongitudeRef
00160086 X       - GPSDestLongitude
00160087 X       - GPSDestBearingRef
00160088 X       - GPSDestBearing
00160089 X       - GPSDestDistanceRef
0016008A X       - GPSDestDistance
0016008B X       - GPSProcessingMethod
0016008C X       - GPSAreaInformation
0016008D X       L GPSDateStamp
0016008E X       - GPSDifferential
00180010 Z/D     - ContrastBolusAgent
00181000 X/Z/D   - DeviceSerialNumber
00181002 U       - DeviceUID
00181004 X       - PlateID
00181005 X       - GeneratorID
00181007 X       - CassetteID
00181008 X       - GantryID
00181009 X       - UniqueDeviceIdentifier
0018100A X       - UDISequence
0018100B U       - ManufacturerDeviceClassUID
00181030 X/D     - ProtocolName
001811BB D       - AcquisitionFieldOfViewLabel
00181400 X/D     - AcquisitionDeviceProcessingDescription
00182042 U       - TargetUID
00184000 X       - AcquisitionComments
00185011 X       - TransducerIdentificationSequence
0018700A X/D     - DetectorID
00189185 X       - RespiratoryMotionCompensationTechniqueDescription
00189367 D       - XRaySourceID
00189369 D       L SourceStartDateTime
0018936A D       L SourceEndDateTime
00189371 D       - XRayDetectorID
00189373 X       - XRayDetectorLabel
0018937B X       - MultienergyAcquisitionDescription
0018937F X       - DecompositionDescription
00189424 X       - AcquisitionProtocolDescription
00189516 X/D     L StartAcquisitionDateTime
00189517 X/D     L EndAcquisitionDateTime
00189937 X       - RequestedSeriesDescription
0018A003 X       - ContributionDescription
0020000D U       - StudyInstanceUID
0020000E U       - SeriesInstanceUID
00200010 Z       - StudyID
00200052 U       - FrameOfReferenceUID
00200200 U       - SynchronizationFrameOfReferenceUID
00203401 X       - ModifyingDeviceID
00203406 X       - ModifiedImageDescription
00204000 X       - ImageComments
00209158 X       - FrameComments
00209161 U       - ConcatenationUID
00209164 U       - DimensionOrganizationUID
00281199 U       - PaletteColorLookupTableUID
00281214 U       - LargePaletteColorLookupTableUID
00284000 X       - ImagePresentationComments
00320012 X       - StudyIDIssuer
00321020 X       - ScheduledStudyLocation
00321021 X       - ScheduledStudyLocationAETitle
00321030 X       - ReasonForStudy
00321032 X       - RequestingPhysician
00321033 X       - RequestingService
00321060 X/Z     - RequestedProcedureDescription
00321066 X       - ReasonForVisit
00321067 X       - ReasonForVisitCodeSequence
00321070 X       - RequestedContrastAgent
00324000 X       - StudyComments
00340001 D       - FlowIdentifierSequence
00340002 D       - FlowIdentifier
00340005 D       - SourceIdentifier
00340007 D       L FrameOriginTimestamp
00380004 X       - ReferencedPatientAliasSequence
00380010 X       - AdmissionID
00380011 X       - IssuerOfAdmissionID
00380014 X       - IssuerOfAdmissionIDSequence
0038001E X       - ScheduledPatientInstitutionResidence
00380020 X       L AdmittingDate
00380021 X       L AdmittingTime
00380040 X       - DischargeDiagnosisDescription
00380050 X       - SpecialNeeds
00380060 X       - ServiceEpisodeID
00380061 X       - IssuerOfServiceEpisodeID
00380062 X       - ServiceEpisodeDescription
00380064 X       - IssuerOfServiceEpisodeIDSequence
00380300 X       - CurrentPatientLocation
00380400 X       - PatientInstitutionResidence
00380500 X       - PatientState
00384000 X       - VisitComments
003A0310 U       - MultiplexGroupUID
003A0314 D       L ImpedanceMeasurementDateTime
00400001 X       - ScheduledStationAETitle
00400002 X       L ScheduledProcedureStepStartDate
00400003 X       L ScheduledProcedureStepStartTime
00400004 X       L ScheduledProcedureStepEndDate
00400005 X       L ScheduledProcedureStepEndTime
00400006 X       - ScheduledPerformingPhysicianName
00400007 X       - ScheduledProcedureStepDescription
00400009 X       - ScheduledProcedureStepID
0040000B X       - ScheduledPerformingPhysicianIdentificationSequence
00400010 X       - ScheduledStationName
00400011 X       - ScheduledProcedureStepLocation
00400012 X       - PreMedication
00400241 X       - PerformedStationAETitle
00400242 X       - PerformedStationName
00400243 X       - PerformedLocation
00400244 X       L PerformedProcedureStepStartDate
00400245 X       L PerformedProcedureStepStartTime
00400250 X       L PerformedProcedureStepEndDate
00400251 X       L PerformedProcedureStepEndTime
00400253 X       - PerformedProcedureStepID
00400254 X       - PerformedProcedureStepDescription
00400275 X       - RequestAttributesSequence
00400280 X       - CommentsOnThePerformedProcedureStep
00400310 X       - CommentsOnRadiationDose
0040050A X       - SpecimenAccessionNumber
00400512 D       - ContainerIdentifier
00400513 Z       - IssuerOfTheContainerIdentifierSequence
0040051A X       - ContainerDescription
00400551 D       - SpecimenIdentifier
00400554 U       - SpecimenUID
00400555 X/Z     - AcquisitionContextSequence
00400562 Z       - IssuerOfTheSpecimenIdentifierSequence
00400600 X       - SpecimenShortDescription
00400602 X       - SpecimenDetailedDescription
00400610 Z       - SpecimenPreparationSequence
004006FA X       - SlideIdentifier
00401001 X       - RequestedProcedureID
00401002 X       - ReasonForTheRequestedProcedure
00401004 X       - PatientTransportArrangements
00401005 X       - RequestedProcedureLocation
0040100A X       - ReasonForRequestedProcedureCodeSequence
00401010 X       - NamesOfIntendedRecipientsOfResults
00401011 X       - IntendedRecipientsOfResultsIdentificationSequence
00401101 D       - PersonIdentificationCodeSequence
00401102 X       - PersonAddress
00401103 X       - PersonTelephoneNumbers
00401104 X       - PersonTelecomInformation
00401400 X       - RequestedProcedureComments
00402001 X       - ReasonForTheImagingServiceRequest
00402008 X       - OrderEnteredBy
00402009 X       - OrderEntererLocation
00402010 X       - OrderCallbackPhoneNumber
00402011 X       - OrderCallbackTelecomInformation
00402016 Z       - PlacerOrderNumberImagingServiceRequest
00402017 Z       - FillerOrderNumberImagingServiceRequest
00402400 X       - ImagingServiceRequestComments
00403001 X       - ConfidentialityConstraintOnPatientDataDescription
00404005 X       L ScheduledProcedureStepStartDateTime
00404008 X       L ScheduledProcedureStepExpirationDateTime
00404010 X       L ScheduledProcedureStepModificationDateTime
00404011 X       L ExpectedCompletionDateTime
00404023 U       - ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
00404025 X       - ScheduledStationNameCodeSequence
00404027 X       - ScheduledStationGeographicLocationCodeSequence
00404028 X       - PerformedStationNameCodeSequence
00404030 X       - PerformedStationGeographicLocationCodeSequence
00404034 X       - ScheduledHumanPerformersSequence
00404035 X       - ActualHumanPerformersSequence
00404036 X       - HumanPerformerOrganization
00404037 X       - HumanPerformerName
00404050 X       L PerformedProcedureStepStartDateTime
00404051 X       L PerformedProcedureStepEndDateTime
00404052 X       L ProcedureStepCancellationDateTime
0040A027 D       - VerifyingOrganization
0040A073 D       - VerifyingObserverSequence
0040A075 D       - VerifyingObserverName
0040A078 X       - AuthorObserverSequence
0040A07A X       - ParticipantSequence
0040A07C X       - CustodialOrganizationSequence
0040A088 Z       - VerifyingObserverIdentificationCodeSequence
0040A123 D       - PersonName
0040A124 U       - UID
0040A171 U       - ObservationUID
0040A172 U       - ReferencedObservationUIDTrial
0040A192 X       L ObservationDateTrial
0040A193 X       L ObservationTimeTrial
0040A307 X       - CurrentObserverTrial
0040A352 X       - VerbalSourceTrial
0040A353 X       - AddressTrial
0040A354 X       - TelephoneNumberTrial
0040A358 X       - VerbalSourceIdentifierCodeSequenceTrial
0040A402 U       - ObservationSubjectUIDTrial
0040A730 D       - ContentSequence
0040DB0C U       - TemplateExtensionOrganizationUID
0040DB0D U       - TemplateExtensionCreatorUID
0050001B X       - ContainerComponentID
00500020 X       - DeviceDescription
00500021 X       - LongDeviceDescription
00620021 U       - TrackingUID
00700001 D       - GraphicAnnotationSequence
00700084 Z/D     - ContentCreatorName
00700086 X       - ContentCreatorIdentificationCodeSequence
0070031A U       - FiducialUID
00701101 U       - PresentationDisplayCollectionUID
00701102 U       - PresentationSequenceCollectionUID
00880140 U       - StorageMediaFileSetUID
00880200 X       - IconImageSequence
00880904 X       - TopicTitle
00880906 X       - TopicSubject
00880910 X       - TopicAuthor
00880912 X       - TopicKeywords
04000100 U       - DigitalSignatureUID
04000402 X       - ReferencedDigitalSignatureSequence
04000403 X       - ReferencedSOPInstanceMACSequence
04000404 X       - MAC
04000550 X       - ModifiedAttributesSequence
04000551 X       - NonconformingModifiedAttributesSequence
04000552 X       - NonconformingDataElementValue
04000561 X       - OriginalAttributesSequence
04000600 X       - InstanceOriginStatus
20300020 X       - TextString
22000002 X/Z     - LabelText
22000005 X/Z     - BarcodeValue
30060002 D       - StructureSetLabel
30060004 X       - StructureSetName
30060006 X       - StructureSetDescription
30060008 Z       L StructureSetDate
30060009 X/D     L StructureSetTime
30060024 U       - ReferencedFrameOfReferenceUID
30060026 Z       - ROIName
30060028 X       - ROIDescription
30060038 X       - ROIGenerationDescription
30060085 X       - ROIObservationLabel
30060088 X       - ROIObservationDescription
300600A6 Z       - ROIInterpreter
300600C2 U       - RelatedFrameOfReferenceUID
30080054 X/D     L FirstTreatmentDate
30080056 X/D     L MostRecentTreatmentDate
30080105 X/Z     - SourceSerialNumber
30080250 X/D     L TreatmentDate
30080251 X/D     L TreatmentTime
300A0002 D       - RTPlanLabel
300A0003 X       - RTPlanName
300A0004 X       - RTPlanDescription
300A0006 X/D     L RTPlanDate
300A0007 X/D     L RTPlanTime
300A000E X       - PrescriptionDescription
300A0013 U       - DoseReferenceUID
300A0016 X       - DoseReferenceDescription
300A0072 X       - FractionGroupDescription
300A0083 U       - ReferencedDoseReferenceUID
300A00B2 X       - TreatmentMachineName
300A00C3 X       - BeamDescription
300A00DD X       - BolusDescription
300A0196 X       - FixationDeviceDescription
300A01A6 X       - ShieldingDeviceDescription
300A01B2 X       - SetupTechniqueDescription
300A0216 X       - SourceManufacturer
300A02EB X       - CompensatorDescription
300A0608 D       - TreatmentPositionGroupLabel
300A0609 U       - TreatmentPositionGroupUID
300A0611 Z       - RTAccessoryHolderSlotID
300A0615 Z       - RTAccessoryDeviceSlotID
300A0619 D       - RadiationDoseIdentificationLabel
300A0623 D       - RadiationDoseInVivoMeasurementLabel
300A062A D       - RTToleranceSetLabel
300A0650 U       - PatientSetupUID
300A0676 X       - EquipmentFrameOfReferenceDescription
300A067C D       - RadiationGenerationModeLabel
300A067D Z       - RadiationGenerationModeDescription
300A0700 U       - TreatmentSessionUID
300A0734 D       - TreatmentToleranceViolationDescription
300A0736 D       L TreatmentToleranceViolationDateTime
300A073A D       L RecordedRTControlPointDateTime
300A0741 D       L InterlockDateTime
300A0742 D       - InterlockDescription
300A0760 D       L OverrideDateTime
300A0783 D       - InterlockOriginDescription
300C0113 X       - ReasonForOmissionDescription
300E0008 X/Z     - ReviewerName
30100006 U       - ConceptualVolumeUID
3010000B U       - ReferencedConceptualVolumeUID
3010000F Z       - ConceptualVolumeCombinationDescription
30100013 U       - ConstituentConceptualVolumeUID
30100015 U       - SourceConceptualVolumeUID
30100017 Z       - ConceptualVolumeDescription
3010001B Z       - DeviceAlternateIdentifier
3010002D D       - DeviceLabel
30100031 U       - ReferencedFiducialsUID
30100033 D       - UserContentLabel
30100034 D       - UserContentLongLabel
30100035 D       - EntityLabel
30100036 X       - EntityName
30100037 X       - EntityDescription
30100038 D       - EntityLongLabel
3010003B U       - RTTreatmentPhaseUID
30100043 Z       - ManufacturerDeviceIdentifier
3010004C X/D     L IntendedPhaseStartDate
3010004D X/D     L IntendedPhaseEndDate
30100054 D       - RTPrescriptionLabel
30100056 X/D     - RTTreatmentApproachLabel
3010005A Z       - RTPhysicianIntentNarrative
3010005C Z       - ReasonForSuperseding
30100061 X       - PriorTreatmentDoseDescription
3010006E U       - DosimetricObjectiveUID
3010006F U       - ReferencedDosimetricObjectiveUID
30100077 D       - TreatmentSite
3010007A Z       - TreatmentTechniqueNotes
3010007B Z       - PrescriptionNotes
3010007F Z       - FractionationNotes
30100081 Z       - PrescriptionNotesSequence
40000010 X       - Arbitrary
40004000 X       - TextComments
40080042 X       - ResultsIDIssuer
40080102 X       - InterpretationRecorder
4008010A X       - InterpretationTranscriber
4008010B X       - InterpretationText
4008010C X       - InterpretationAuthor
40080111 X       - InterpretationApproverSequence
40080114 X       - PhysicianApprovingInterpretation
40080115 X       - InterpretationDiagnosisDescription
40080118 X       - ResultsDistributionListSequence
40080119 X       - DistributionName
4008011A X       - DistributionAddress
40080202 X       - InterpretationIDIssuer
40080300 X       - Impressions
40084000 X       - ResultsComments
FFFAFFFA X       - DigitalSignaturesSequence
FFFCFFFC X       - DataSetTrailingPadding
"""


@dataclass(frozen=True)
class ProfileAttribute:
    """One row of Table E.1-1.

    Attributes
    ----------
    tag : ``0xggggeeee``.
    keyword : the DICOM keyword (pydicom's dictionary).
    action : the Basic profile's action code (``X``, ``Z``, ``D``, ``U``, ``X/Z``, ...).
    retained_by : ``"dates"`` or ``"patient"`` when one of :data:`OPTIONS` keeps it, else None.
    """

    tag: int
    keyword: str
    action: str
    retained_by: str | None = None

    @property
    def kept(self) -> bool:
        """Whether the workbench's options keep the attribute (action ``K``)."""
        return self.retained_by is not None


def _parse_table(text: str) -> tuple[ProfileAttribute, ...]:
    option = {"L": "dates", "P": "patient", "-": None}
    rows = []
    for line in text.split("\n"):
        if line.strip():
            tag, action, opt, keyword = line.split()
            rows.append(ProfileAttribute(int(tag, 16), keyword, action, option[opt]))
    return tuple(rows)


BASIC_PROFILE: tuple[ProfileAttribute, ...] = _parse_table(_TABLE)
"""Table E.1-1 (see :data:`PROFILE_REFERENCE`), sorted by tag."""

_BY_TAG: dict[int, ProfileAttribute] = {a.tag: a for a in BASIC_PROFILE}

PHI_KEYWORDS: frozenset[str] = frozenset(
    a.keyword for a in BASIC_PROFILE if not a.kept and a.action != "U"
)
"""Keywords the profile removes, empties or replaces under :data:`OPTIONS` (UIDs apart)."""

UID_KEYWORDS: frozenset[str] = frozenset(a.keyword for a in BASIC_PROFILE if a.action == "U")
"""Keywords of the UIDs the profile replaces (action ``U``)."""

_CURVE = ProfileAttribute(0x50000000, "CurveData", "X")
_OVERLAY_DATA = ProfileAttribute(0x60003000, "OverlayData", "X")
_OVERLAY_COMMENTS = ProfileAttribute(0x60004000, "OverlayComments", "X")

DUMMY_VALUES: dict[str, Any] = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UR": "urn:anonymized",
}
"""The dummy value written for a ``D`` action, by VR (numbers get 0, binary values two zero
bytes, sequences zero items). The audit does not count these values as PHI."""

_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PSEUDONYM_RE = re.compile(r"^PSEUDO-[0-9a-f]{16}$")
_TAG_BURNED_IN = 0x00280301


def profile_action(tag: int) -> ProfileAttribute | None:
    """The profile row of ``tag``, repeating groups and private tags included.

    Returns
    -------
    ProfileAttribute or None
        None for attributes the profile does not list (they are kept). A private tag returns
        an ``X`` row with the keyword ``""``.
    """
    group, elem = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        return ProfileAttribute(tag, "", "X")
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return _CURVE
    if 0x6000 <= group <= 0x60FF and group % 2 == 0 and elem in (0x3000, 0x4000):
        return _OVERLAY_DATA if elem == 0x3000 else _OVERLAY_COMMENTS
    return _BY_TAG.get(tag)


def pseudonym(code: str, salt: str, *, prefix: str = "Doctor", n_hex: int = 6) -> str:
    """A stable pseudonym for ``code``: ``HMAC-SHA256(salt, code)``, first ``n_hex`` digits.

    The same code and salt always give the same pseudonym, so tables, charts and downloads
    agree; without the salt (``QUALITY_PHI_SALT``) it cannot be reversed by trying codes.
    Six hex digits keep collisions unlikely for a few hundred codes (birthday bound
    :math:`n^2 / 2^{25}`).

    Examples
    --------
    >>> pseudonym("D01", "salt") == pseudonym("D01", "salt")
    True
    >>> pseudonym("D01", "salt").startswith("Doctor-")
    True
    """
    digest = hmac.new(str(salt).encode(), str(code).encode(), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:n_hex]}"


def pseudonymise_agreement(summary: AgreementSummary, salt: str) -> AgreementSummary:
    """A copy of an agreement summary with every annotator code replaced by its
    :func:`pseudonym`: the pairwise tables' index and columns, and the keys of the worst
    items' ``labels`` and ``boxes``. Statistics are unchanged.

    For roles that may see how doctors agree but not who they are (data scientists).
    """

    def rename(code: Any) -> str:
        return pseudonym(str(code), salt)

    def rekey(value: Any) -> Any:
        return {rename(k): v for k, v in value.items()} if isinstance(value, Mapping) else value

    worst = summary.worst_items.copy()
    for col in ("labels", "boxes"):
        if col in worst:
            worst[col] = worst[col].map(rekey)
    return dataclasses.replace(
        summary,
        pairwise_kappa=summary.pairwise_kappa.rename(index=rename, columns=rename),
        pairwise_n=summary.pairwise_n.rename(index=rename, columns=rename),
        worst_items=worst,
    )


# --------------------------------------------------------------------------- audit


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    if value is None:
        return True
    if isinstance(value, str | bytes):
        return not value.strip(" \x00" if isinstance(value, str) else b" \x00")
    if isinstance(value, Sequence | list | tuple):
        return len(value) == 0
    return str(value).strip() == ""


def _is_placeholder(elem: DataElement) -> bool:
    """A dummy or a pseudonym this module writes: not PHI."""
    vr = str(elem.VR)
    value = elem.value
    if vr in _NUMERIC_VRS:
        return value == 0
    if vr in _BINARY_VRS:
        return isinstance(value, bytes) and not value.strip(b"\x00")
    text = str(value).strip(" \x00")
    return text == str(DUMMY_VALUES.get(vr, "\x00")) or bool(_PSEUDONYM_RE.match(text))


@dataclass
class _Finding:
    """What one header holds: PHI keywords, UID keywords, private tags, burned-in state."""

    phi: list[str]
    uids: list[str]
    n_private: int
    burned_in: str | None  # "YES", "unknown" or None (NO, or a modality that rarely burns in)
    sop_uid: str | None


def _walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element, nested sequence items included; file meta first."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta
    yield from ds.iterall()


def _inspect(ds: Dataset) -> _Finding:
    phi: set[str] = set()
    uids: set[str] = set()
    n_private = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for elem in _walk(ds):
            tag = int(elem.tag)
            if (tag >> 16) % 2 == 1:
                n_private += 1
                continue
            attr = profile_action(tag)
            if attr is None or attr.kept:
                continue
            try:
                if _is_empty(elem) or _is_placeholder(elem):
                    continue
            except (ValueError, TypeError, AttributeError, struct.error, OverflowError):
                pass  # a value that does not even parse is still there: count it
            (uids if attr.action == "U" else phi).add(attr.keyword)
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        modality = str(ds.get("Modality", "") or "").strip().upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip() or None
    if burned == "YES":
        state: str | None = "YES"
    elif burned == "" and (
        modality in BURN_IN_MODALITIES or sop_class.startswith(_SC_SOP_CLASS_PREFIX)
    ):
        state = "unknown"
    else:
        state = None
    return _Finding(sorted(phi), sorted(uids), n_private, state, sop_uid)


@dataclass
class PhiAuditReport:
    """What :func:`phi_audit` / :func:`phi_audit_store` found. Never holds a value.

    Attributes
    ----------
    scope : the dataset name (and version), or the store root.
    n_images : images (files) in scope; ``n_audited`` of them were read.
    attributes : per PHI keyword: ``tag`` (``"(0010,0010)"``), ``action``, ``n_images`` and
        up to three ``examples`` (SOP Instance UIDs).
    uids : per UID keyword, the number of images with an original UID (information).
    private : ``n_images`` with private tags, ``n_tags`` in all, ``examples``.
    burned_in : ``yes`` and ``unknown``: each ``n_images`` and ``examples``.
    images : per image with a finding: ``sop_uid`` (or ``key`` for a store entry without
        one), ``tags`` (PHI keywords), ``private`` (count), ``burned_in``.
    errors : per unreadable image: ``sop_uid`` or ``key``, ``kind``, ``message``.
    """

    scope: str
    n_images: int = 0
    n_audited: int = 0
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    uids: dict[str, int] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)
    burned_in: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str | None]] = field(default_factory=list)
    options: tuple[str, ...] = OPTIONS

    @property
    def n_flagged(self) -> int:
        """Images with PHI attributes, private tags or BurnedInAnnotation = YES."""
        return sum(1 for r in self.images if r["tags"] or r["private"] or r["burned_in"] == "YES")

    @property
    def passed(self) -> bool:
        """No PHI attribute, no private tag and no burned-in annotation was found (unreadable
        files and *unknown* burned-in states are reported but do not fail the audit)."""
        return self.n_flagged == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (keywords, counts and UIDs only)."""
        return {
            "scope": self.scope,
            "profile": PROFILE_REFERENCE,
            "options": list(self.options),
            "passed": self.passed,
            "n_images": self.n_images,
            "n_audited": self.n_audited,
            "n_flagged": self.n_flagged,
            "attributes": self.attributes,
            "original_uids": self.uids,
            "private_tags": self.private,
            "burned_in": self.burned_in,
            "images": self.images,
            "errors": self.errors,
        }


class _Collector:
    """Accumulates findings into a :class:`PhiAuditReport`."""

    def __init__(self, report: PhiAuditReport, n_examples: int = 3) -> None:
        self.report = report
        self.n_examples = n_examples
        self.phi: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.uids: Counter[str] = Counter()
        self.private_images: list[str] = []
        self.private_tags = 0
        self.burned: dict[str, list[str]] = {"yes": [], "unknown": []}

    def add(self, finding: _Finding, ident: dict[str, Any]) -> None:
        name = str(finding.sop_uid or ident.get("sop_uid") or ident.get("key") or "?")
        for kw in finding.phi:
            self.phi[kw] += 1
            ex = self.examples.setdefault(kw, [])
            if len(ex) < self.n_examples:
                ex.append(name)
        self.uids.update(finding.uids)
        if finding.n_private:
            self.private_images.append(name)
            self.private_tags += finding.n_private
        if finding.burned_in == "YES":
            self.burned["yes"].append(name)
        elif finding.burned_in == "unknown":
            self.burned["unknown"].append(name)
        if finding.phi or finding.n_private or finding.burned_in:
            self.report.images.append(
                {
                    **ident,
                    "sop_uid": finding.sop_uid or ident.get("sop_uid"),
                    "tags": finding.phi,
                    "private": finding.n_private,
                    "burned_in": finding.burned_in,
                }
            )
        self.report.n_audited += 1

    def error(self, exc: DicomReadError, ident: dict[str, Any]) -> None:
        # exc.message, never str(exc): the URI may be a path named after an accession number.
        self.report.errors.append({**ident, "kind": exc.kind, "message": exc.message})

    def finish(self) -> PhiAuditReport:
        r = self.report
        for kw, n in sorted(self.phi.items(), key=lambda kv: (-kv[1], kv[0])):
            attr = next(a for a in (*BASIC_PROFILE, _CURVE, _OVERLAY_DATA, _OVERLAY_COMMENTS)
                        if a.keyword == kw)  # fmt: skip
            r.attributes[kw] = {
                "tag": f"({attr.tag >> 16:04X},{attr.tag & 0xFFFF:04X})",
                "action": attr.action,
                "n_images": n,
                "examples": self.examples[kw],
            }
        r.uids = dict(sorted(self.uids.items()))
        r.private = {
            "n_images": len(self.private_images),
            "n_tags": self.private_tags,
            "examples": self.private_images[: self.n_examples],
        }
        r.burned_in = {
            k: {"n_images": len(v), "examples": v[: self.n_examples]}
            for k, v in self.burned.items()
        }
        return r


Progress = Callable[[int, int, str], None]


def _audit_one(col: _Collector, uri: str, ident: dict[str, Any]) -> None:
    from quality import dicom  # quality.dicom imports this module's profile table

    try:
        ds = dicom.read_header(uri)
    except DicomReadError as exc:
        col.error(exc, ident)
        return
    col.add(_inspect(ds), ident)


@_db_errors
def phi_audit(
    session: Session,
    dataset: str | int,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> PhiAuditReport:
    """Audit the headers of the newest version of a dataset for identifying attributes.

    Each image's header is read (header only; remote URIs through the store layer) and its
    elements, nested ones included, are compared with :data:`BASIC_PROFILE` under
    :data:`OPTIONS`: an attribute the profile does not keep counts when it is present with a
    value that is neither empty nor one of the dummies this module writes. UIDs are counted
    apart (information), private tags and burned-in annotation as the module docs say.

    Parameters
    ----------
    session : an open session.
    dataset : the dataset's name or id.
    limit : audit only the first ``limit`` images (by image id).
    progress : ``progress(done, total, label)`` after each image.

    Returns
    -------
    PhiAuditReport
        Keywords, counts and SOP Instance UIDs only: never a value.

    Raises
    ------
    DatasetNotFoundError
        Unknown dataset (the message lists the known ones).
    PhiInputError
        The dataset has no version yet, or ``limit`` is not positive.
    DatabaseUnavailableError, EmptyDatabaseError
        The DB cannot be read, or has no schema.
    StoreUnavailableError
        A remote store stopped answering.
    """
    if limit is not None and limit < 1:
        raise PhiInputError("--limit", f"must be a positive number of images, not {limit}")
    dataset_id = resolve_dataset(session, dataset)
    name = session.scalar(select(DatasetRow.name).where(DatasetRow.id == dataset_id))
    version_id = newest_version_id(session, dataset_id)
    if version_id is None:
        raise PhiInputError("dataset", f"dataset {name!r} has no version yet: nothing to audit")
    version = session.scalar(select(DatasetVersion.version).where(DatasetVersion.id == version_id))
    stmt = (
        select(Image.id, Image.sop_uid, Image.uri)
        .join(DatasetItem, DatasetItem.image_id == Image.id)
        .where(DatasetItem.version_id == version_id)
        .order_by(Image.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    report = PhiAuditReport(scope=f"dataset {name} {version}", n_images=len(rows))
    col = _Collector(report)
    for i, (image_id, sop_uid, uri) in enumerate(rows, 1):
        _audit_one(col, str(uri), {"image_id": int(image_id), "sop_uid": sop_uid})
        if progress is not None:
            progress(i, len(rows), "phi-audit")
    return col.finish()


def phi_audit_store(
    store_uri: str, *, limit: int | None = None, progress: Progress | None = None
) -> PhiAuditReport:
    """:func:`phi_audit` for a store that is not (or not yet) in the DB: every file of a
    folder, ``s3://`` prefix or DICOMweb root. Images are named by their SOP Instance UID;
    an unreadable file by its key (its path in the store).

    Raises
    ------
    StoreError
        The store cannot be opened or listed.
    PhiInputError
        ``limit`` is not positive.
    """
    from quality.store import open_store

    if limit is not None and limit < 1:
        raise PhiInputError("--limit", f"must be a positive number of images, not {limit}")
    store = open_store(store_uri)
    entries = list(store.list())
    if limit is not None:
        entries = entries[:limit]
    report = PhiAuditReport(scope=f"store {store.root}", n_images=len(entries))
    col = _Collector(report)
    for i, entry in enumerate(entries, 1):
        _audit_one(col, entry.uri, {"key": entry.key})
        if progress is not None:
            progress(i, len(entries), "phi-audit")
    return col.finish()


# --------------------------------------------------------------------------- de-identification


def _new_uid(uid: str, salt: str) -> str:
    """The replacement of ``uid``: the same for the same (salt, uid).

    A ``2.25.<UUID as an integer>`` UID (PS3.5 B.2), the UUID made from the first 128 bits
    of ``HMAC-SHA256(salt, uid)`` with the name-based version bits (RFC 9562). (pydicom's
    ``generate_uid(prefix=None, ...)`` ignores its entropy sources and would not be stable.)
    """
    digest = hmac.new(salt.encode(), uid.encode(), hashlib.sha256).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def _pseudo_id(value: str, salt: str) -> str:
    digest = hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"PSEUDO-{digest[:16]}"


def _choose(action: str) -> str:
    """One action out of a combination: remove when allowed, else empty, else a dummy.

    The IOD's attribute types are not known here, so ``X`` is preferred (``X/Z``, ``X/D``,
    ``X/Z/D``, ``X/Z/U*``), then ``Z`` (``Z/D``); readers of the cleaned files (the
    workbench included) need none of these.
    """
    parts = action.rstrip("*").split("/")
    for pick in ("X", "Z", "D", "U"):
        if pick in parts:
            return pick
    return "X"


def _dummy(elem: DataElement, salt: str) -> Any:
    vr = str(elem.VR)
    if vr == "SQ":
        return Sequence()
    if vr == "UI":
        return _new_uid(str(elem.value), salt)
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    return DUMMY_VALUES.get(vr, "ANONYMIZED")


def _clean(ds: Dataset, salt: str) -> None:
    """Apply the profile to ``ds`` and its sequence items, in place."""
    for elem in list(ds):
        tag = int(elem.tag)
        attr = profile_action(tag)
        if attr is None:
            if elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    _clean(item, salt)
            continue
        if attr.kept:
            continue
        what = _choose(attr.action)
        if what == "X":
            del ds[elem.tag]
        elif what == "Z":
            if elem.keyword == "PatientID" and not _is_empty(elem):
                # Zero length would merge every patient into one; a salted pseudonym keeps
                # patients apart (PS3.15 allows a dummy for Z) and identifies no one.
                elem.value = _pseudo_id(str(elem.value), salt)
            else:
                elem.value = Sequence() if elem.VR == "SQ" else None
        elif what == "U":
            if elem.VR == "UI" and not _is_empty(elem):
                values = elem.value if isinstance(elem.value, list) else [elem.value]
                new = [_new_uid(str(v), salt) for v in values]
                elem.value = new if len(new) > 1 else new[0]
        else:
            elem.value = _dummy(elem, salt)


def _method_sequence() -> Sequence:
    items = []
    for code, meaning in _METHOD_CODES:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def _read_full(src: Path) -> Dataset:
    from quality import dicom  # quality.dicom imports this module's profile table

    uri = str(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src, force=True)
            if not len(ds):
                raise DicomReadError(uri, "not_dicom", "no data elements")
            dicom.pixel_sha256(src)  # ingest's checks: a header or pixels cut short raise
    except DicomReadError:
        raise
    except OSError as exc:
        raise DicomReadError(uri, "read_error", f"cannot read the file: {exc.strerror}") from exc
    except (ValueError, TypeError, KeyError, IndexError, EOFError, struct.error) as exc:
        raise DicomReadError(uri, "read_error", f"malformed file: {type(exc).__name__}") from exc
    return ds


def deidentify_file(src: str | Path, dst: str | Path, *, salt: str) -> None:
    """Write a de-identified copy of one DICOM file.

    The profile (:data:`BASIC_PROFILE`, under :data:`OPTIONS`) is applied to every element,
    nested ones included: ``X`` removed, ``Z`` emptied, ``D`` replaced by a dummy of the VR
    (:data:`DUMMY_VALUES`), ``U`` replaced by a UID derived from ``(salt, uid)`` (``_new_uid``), so
    the same UID maps to the same new UID in every file (studies and series stay grouped,
    references still resolve). Combinations pick ``X`` first, then ``Z``. PatientID becomes
    ``PSEUDO-<16 hex>`` (salted HMAC), so patients stay apart. Private tags, curves and
    overlay data go. BurnedInAnnotation is kept. PatientIdentityRemoved is set to ``YES``,
    DeidentificationMethod and its code sequence (PS3.16 CID 7050) name the profile and
    options. The pixels are copied unchanged.

    Parameters
    ----------
    src, dst : source and destination paths (``dst``'s folder is created).
    salt : the secret that makes replacements unguessable (``QUALITY_PHI_SALT``).

    Raises
    ------
    DicomReadError
        ``src`` cannot be read as a complete DICOM file.
    """
    src, dst = Path(src), Path(dst)
    ds = _read_full(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.remove_private_tags()
        _clean(ds, salt)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "; ".join(
            ("DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile", *OPTIONS)
        )[:64]
        ds.DeidentificationMethodCodeSequence = _method_sequence()
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            meta = FileMetaDataset()
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.file_meta = meta
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = _new_uid(str(meta.MediaStorageSOPInstanceUID), salt)
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst, enforce_file_format=True)


@dataclass(frozen=True)
class DeidentifySummary:
    """What :func:`deidentify_folder` did.

    Attributes
    ----------
    src, dst : the folders.
    n_files : files found under ``src``; ``n_written`` cleaned copies written.
    skipped : files that could not be read (not copied): ``key`` (path under ``src``),
        ``kind``, ``message``.
    seconds : wall time.
    """

    src: str
    dst: str
    n_files: int
    n_written: int
    skipped: list[dict[str, str]]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "src": self.src,
            "dst": self.dst,
            "n_files": self.n_files,
            "n_written": self.n_written,
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
            "profile": PROFILE_REFERENCE,
            "options": list(OPTIONS),
            "seconds": round(self.seconds, 3),
        }


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def deidentify_folder(
    src_dir: str | Path,
    dst_dir: str | Path,
    *,
    salt: str,
    progress: Progress | None = None,
) -> DeidentifySummary:
    """De-identify every file under ``src_dir`` into ``dst_dir`` (:func:`deidentify_file`).

    The copy is laid out as ``<first folder>/<new SOP Instance UID>.dcm``: the first folder
    names the source (:func:`quality.ingest.source_name`) and is kept; deeper folder and file
    names, which often carry accession numbers or patient names, are not. Files that cannot
    be read are skipped and listed; nothing is written for them.

    Raises
    ------
    PhiInputError
        ``src_dir`` is not a folder, ``dst_dir`` is inside it or is not empty.
    """
    started = dt.datetime.now(dt.UTC)
    src, dst = Path(src_dir).resolve(), Path(dst_dir).resolve()
    if not src.is_dir():
        raise PhiInputError("SRC", f"{src_dir} is not a folder")
    if dst == src or src in dst.parents:
        raise PhiInputError("DST", "the cleaned copy must not be inside the source folder")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise PhiInputError("DST", f"{dst_dir} exists and is not an empty folder")
    files = _files(src)
    skipped: list[dict[str, str]] = []
    written = 0
    for i, path in enumerate(files, 1):
        rel = path.relative_to(src)
        try:
            ds = _read_full(path)
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            name = f"{_new_uid(sop, salt) if sop else _new_uid(rel.as_posix(), salt)}.dcm"
            folder = dst / rel.parts[0] if len(rel.parts) > 1 else dst
            deidentify_file(path, folder / name, salt=salt)
            written += 1
        except DicomReadError as exc:
            skipped.append({"key": rel.as_posix(), "kind": exc.kind, "message": exc.message})
        if progress is not None:
            progress(i, len(files), "deidentify")
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return DeidentifySummary(str(src), str(dst), len(files), written, skipped, seconds)
