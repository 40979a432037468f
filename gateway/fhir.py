"""FHIR REST knowledge: resource types and standard operations (R4 and R5).

Route labels may only contain names from these lists (plus operations a route
declares): anything else a client puts in a path could be an identifier, so it
never becomes a label.
"""

from __future__ import annotations

RESOURCE_TYPES = frozenset(
    """
    Account ActivityDefinition ActorDefinition AdministrableProductDefinition AdverseEvent
    AllergyIntolerance Appointment AppointmentResponse ArtifactAssessment AuditEvent Basic Binary
    BiologicallyDerivedProduct BiologicallyDerivedProductDispense BodyStructure Bundle
    CanonicalResource CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap
    Condition ConditionDefinition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceAssociation DeviceDefinition
    DeviceDispense DeviceMetric DeviceRequest DeviceUsage DeviceUseStatement DiagnosticReport
    DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter EncounterHistory Endpoint
    EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag
    FormularyItem GenomicStudy Goal GraphDefinition Group GuidanceResponse HealthcareService
    ImagingSelection ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation
    ImplementationGuide Ingredient InsurancePlan InventoryItem InventoryReport Invoice Library
    Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductDefinition MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
    MessageDefinition MessageHeader MolecularDefinition MolecularSequence NamingSystem
    NutritionIntake NutritionOrder NutritionProduct Observation ObservationDefinition
    OperationDefinition OperationOutcome Organization OrganizationAffiliation PackagedProductDefinition
    Parameters Patient PaymentNotice PaymentReconciliation Permission Person PlanDefinition
    Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
    RegulatedAuthorization RelatedPerson RequestGroup RequestOrchestration Requirements
    ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
    RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription SubscriptionStatus SubscriptionTopic Substance
    SubstanceDefinition SubstanceNucleicAcid SubstancePolymer SubstanceProtein
    SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery
    SupplyRequest Task TerminologyCapabilities TestPlan TestReport TestScript Transport ValueSet
    VerificationResult VisionPrescription
    """.split()
)

OPERATIONS = frozenset(
    """
    apply closure conforms convert cqf-apply data-requirements diff document evaluate
    evaluate-measure everything expand export find-matches graph graphql implements
    lastn lookup match member-add member-remove meta meta-add meta-delete populate
    populatehtml populatelink process-message purge questionnaire reindex snapshot stats
    submit-data subset subsumes transform translate validate validate-code versions
    binary-access-read binary-access-write care-gaps collect-data export-poll-status
    """.split()
)

# Query parameters whose values are safe to record: they shape the response and
# carry no patient data. Every other parameter is recorded by name only.
CONTROL_PARAMETERS = frozenset(
    """
    _count _sort _include _revinclude _summary _elements _format _pretty _total
    _contained _containedType _offset _page _getpages _getpagesoffset _pretty
    """.split()
)
