package daemon

import (
	"fmt"
	"slices"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// Crash points name every durable step of the pipeline: a point is "STAGE"
// (the stage was just recorded in the state database) or "STAGE/EVENT"
// (while in STAGE, EVENT is durable). The pipeline calls reached at each;
// the crash test kills the daemon at every one of CrashPoints and then at
// random moments. This file is the one list of them: reached refuses, in
// tests, a point that is not in it.
const (
	ptSealing          = "sealing"
	ptSealingAdmitted  = "sealing/admitted"
	ptCiphertextStored = "sealing/ciphertext-stored"
	ptSealingSealed    = "sealing/sealed"
	ptSealed           = "sealed"
	ptSigned           = "sealed/signed"
	// ptStored + an object suffix: that small object is stored.
	ptStored          = "sealed/stored"
	ptUploaded        = "uploaded"
	ptUploadedAudited = "uploaded/audited"
	ptProvenAudited   = "uploaded/proven-audited"
	ptProven          = "proven"
	// ptAbandoned: the "abandoned" record of a given-up attempt is durable
	// and its progress not yet cleared.
	ptAbandoned = "abandoned"
)

// crashPoint is one entry of the list. pinned: the archive must carry a
// .keep pin for the point to be reached.
type crashPoint struct {
	name   string
	pinned bool
}

// crashPoints is every crash point, in pipeline order; ptAbandoned follows
// ptSealing because a restart after a crash there abandons the attempt,
// and ptDebrisDestroyed follows ptShredClaimed because the restart after a
// crash there destroys the debris it left.
var crashPoints = func() []crashPoint {
	pts := []crashPoint{{name: ptSealing}, {name: ptAbandoned}, {name: ptSealingAdmitted}, {name: ptCiphertextStored},
		{name: ptSealingSealed}, {name: ptSealed}, {name: ptSigned}}
	// One point after each small object; the keys of an empty base key
	// are the bare suffixes.
	for _, u := range (manifest.Signed{Objects: manifest.ObjectsFor("")}).Uploads() {
		pts = append(pts, crashPoint{name: ptStored + u.Key})
	}
	pts = append(pts, []crashPoint{{name: ptUploaded}, {name: ptUploadedAudited}, {name: ptProvenAudited},
		{name: ptProven}, {name: "proven/pinned-audited", pinned: true}, {name: "pinned", pinned: true},
		{name: "shredding"}, {name: "shredding/intent-audited"}, {name: ptShredClaimed}, {name: ptDebrisDestroyed}, {name: "shredding/destroyed"},
		{name: "shredding/done-audited"}, {name: "shredded"}}...)
	return pts
}()

// testHookStage, when set (by tests only; nil in production), is called
// right after each durable step of the pipeline with the crash point's
// name and the archive's progress. The crash test's child daemon SIGKILLs
// itself there, so that a restart is exercised after every step, however
// short its window.
var testHookStage func(point string, p *Progress)

// reached calls testHookStage, and in tests refuses a point missing from
// crashPoints (so the list cannot drift from the code).
func reached(point string, p *Progress) {
	if testHookStage == nil {
		return
	}
	if !slices.ContainsFunc(crashPoints, func(c crashPoint) bool { return c.name == point }) {
		panic(fmt.Sprintf("daemon: crash point %q is not in crashPoints", point))
	}
	testHookStage(point, p)
}
