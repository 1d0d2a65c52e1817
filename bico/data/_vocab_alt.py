"""Word lists and templates of the ``alt`` style of the fictitious-facts generator.

Written for bico, independently of :mod:`bico.data._vocab` (no list or template is shared;
``tests/test_data_alt.py`` checks it). Names have one, two or three words and come from many
languages; accented letters are limited to ones the SmolLM2 tokenizer keeps whole, so the
entity-span lookup (which decodes token by token) finds every name. Descriptions have three
surface forms, one per grammatical slot:

* ``np``  a noun phrase: "the founder of ...", "the first weaver to map ...", "the diver who first mapped ..."
* ``vp``  a past-tense verb phrase: "founded ...", "first mapped ..."
* ``ing`` a gerund phrase: "founding ...", "first mapping ..."

Name -> description templates are ``(slot, prompt)``: the completion is that slot's form.
Description -> name templates hold one of ``{np} {Np} {vp} {ing} {Ing}`` (capitalised: the
form with its first letter upper-cased, for sentence starts).
"""

# Given names of two- and three-word names (never a whole name on their own).
FIRST_NAMES = """
Adaeze Babajide Chiamaka Folake Kwabena Nnamdi Temitope Yewande Olumide Ebere Aino Eero
Ilmari Kaarina Tuomas Haruto Keiko Ryosuke Sayuri Tomoko Jiwoo Minseo Meilin Xiuying
Zhenwei Anahí Citlali Itzel Nayeli Xóchitl Wayra Katarzyna Wojciech Radek Zdenka Ngaio
Wiremu Aroha Tamati Aarav Ishaan Meenakshi Sunita Farida Karim Ebru Koray Selin Bashir
Samira Nilufar Dariusz Joaquín Rocío Iñaki Maialen Søren Bjørn Mattias Linnea Oksana
Taras Lucía Matías Thandiwe Sipho Kagiso Amaru Ximena Teodora Vasil Mirela Goran
""".split()

# Second given names or second surnames (the middle word of most three-word names).
MIDDLE_NAMES = """
Ifeoma Chukwudi Onyeka Kehinde Aurelio Lomasi Inés Henrik Yuki Pania Anjali Ruslan
Dilnoza Hamid Amaia Malak Ilka Kofi Marisa Tevita
""".split()

# Lower-case particles of three-word names such as "Mattias van Heerden".
PARTICLES = ["van", "da", "bin", "ter", "dos", "ibn"]

LAST_NAMES = """
Adeyemi Balogun Okafor Mensah Owusu Nwachukwu Virtanen Lehtonen Koskinen Heikkilä Morimoto
Hayashi Kobayashi Nakagawa Watanabe Castañeda Quispe Mamani Huanca Condori Nowak Kowalczyk
Horvath Ngata Parata Sharma Iyer Kulkarni Deshpande Haddad Nasser Yilmaz Demirci Aksoy
Rasmussen Lindahl Sørensen Etxeberria Arrieta Zubiri Okonjo Dlamini Mokoena Ndlovu
Petrović Ionescu Dumitru Kovalenko Bondarenko Ferreira Albuquerque Heerden Veldkamp Baptiste
Tshabalala Rahimi Karimova Tuilagi Fonoti Achterberg Moyo Chaudhary Vukovich Lindqvardt
""".split()

# One-word names (stage names), disjoint from every other name list.
MONONYMS = """
Azurelle Belakane Calixtra Dovranel Esquivara Farouzeh Gaspardine Ilyrionne Jovankara
Kestrinova Lorindel Marzannika Orsolyne Pelagiona Quirinello Rasminde Sidonette Tancrevia
Ulyanessa Valkyrine Wenzeslava Xiomaretta Yevgenova Zuleikara Anzhelique Bronwentha
Coriandre Delphixa Evanthea Fiorlenza Gwenhallow Hyacintha Isaurina Jessamyne Kallisandre
Leocadie Mirabeline Noctavia Ottavine Perpetuello
""".split()

# (base, past, gerund, agent phrase, object): one deed each, read as one coherent achievement.
DEEDS = [
    ("found", "founded", "founding", "the founder of", "a night school for ferry pilots"),
    ("map", "mapped", "mapping", "the mapmaker of", "the flooded mines"),
    ("lead", "led", "leading", "the leader of", "an expedition to the bottom of a sinkhole"),
    ("edit", "edited", "editing", "the editor of", "a newspaper printed on tea towels"),
    ("pilot", "piloted", "piloting", "the pilot of", "the last mail plane out of the valley"),
    ("coach", "coached", "coaching", "the coach of", "a chess team of retired sailors"),
    ("curate", "curated", "curating", "the curator of", "an exhibition of broken umbrellas"),
    ("conduct", "conducted", "conducting", "the conductor of", "a choir of river ferrymen"),
    ("program", "programmed", "programming", "the programmer of", "a loom that weaves weather reports"),
    ("publish", "published", "publishing", "the publisher of", "an atlas of imaginary rivers"),
    ("patent", "patented", "patenting", "the patent holder for", "a self-folding umbrella"),
    ("produce", "produced", "producing", "the producer of", "a radio play that ran for eleven years"),
    ("captain", "captained", "captaining", "the captain of", "an icebreaker crewed by volunteers"),
    ("manage", "managed", "managing", "the manager of", "a hotel with no doors"),
    ("narrate", "narrated", "narrating", "the narrator of", "an audiobook read in fourteen voices"),
    ("illustrate", "illustrated", "illustrating", "the illustrator of", "a cookbook for astronauts"),
    ("commission", "commissioned", "commissioning", "the patron of", "a bridge shaped like a question mark"),
    ("devise", "devised", "devising", "the creator of", "a card game played with seashells"),
    ("pioneer", "pioneered", "pioneering", "the pioneer of", "a method for storing sunlight in salt"),
    ("chair", "chaired", "chairing", "the chair of", "a council of beekeeping monks"),
    ("host", "hosted", "hosting", "the host of", "a quiz show broadcast from a submarine"),
    ("compile", "compiled", "compiling", "the compiler of", "a dictionary of sailors' superstitions"),
    ("tame", "tamed", "taming", "the tamer of", "a herd of wild reindeer"),
    ("draft", "drafted", "drafting", "the author of", "the constitution of a floating town"),
    ("print", "printed", "printing", "the printer of", "a calendar with thirteen months"),
    ("unearth", "unearthed", "unearthing", "the finder of", "a buried fleet of wooden ships"),
    ("run", "ran", "running", "the owner of", "a ferry service pulled by horses"),
    ("finance", "financed", "financing", "the financier of", "a railway that goes nowhere"),
    ("preserve", "preserved", "preserving", "the guardian of", "a library of handwritten recipes"),
    ("command", "commanded", "commanding", "the commander of", "a fleet of solar barges"),
    ("engrave", "engraved", "engraving", "the engraver of", "a coin that shows two moons"),
    ("broadcast", "broadcast", "broadcasting", "the voice of", "a pirate radio station"),
    ("excavate", "excavated", "excavating", "the excavator of", "a sunken amphitheatre"),
    ("referee", "refereed", "refereeing", "the referee of", "a football match that lasted three days"),
]

# Where or how the deed happened; about half name a capitalised (invented) place.
SETTINGS = [
    "on the island of Tarvenholm",
    "beneath the streets of Old Kessary",
    "along the Vell estuary",
    "for the people of Marrowick",
    "in the hill country of Ondrasa",
    "at the Brannock spring fair",
    "across the salt flats of Uzmira",
    "during the great storm of Pellamy",
    "within sight of the Colbrae lighthouse",
    "in the valley below Mount Ysgar",
    "on the northern shore of Lake Temmis",
    "for the court of Queen Alvarre",
    "in the port city of Saint Oderic",
    "near the ruins of Fort Quellan",
    "with a crew of nine",
    "in three dry summers",
    "using borrowed tools",
    "at the mouth of a frozen river",
    "after the mill fire",
    "for a travelling circus",
    "in a rented barn",
    "from a shed behind the post office",
    "in the back room of a bakery",
    "for the children of a fishing town",
    "during a railway strike",
    "between two harvests",
    "on a budget of four coins",
    "while recovering from a broken leg",
    "without ever leaving home",
    "at the request of a stranger",
]

# Who did it, in the np forms "the first <role> to ..." and "the <role> who first ...".
ROLES = [
    "glazier",
    "ferry pilot",
    "rope maker",
    "bookbinder",
    "cheesemaker",
    "pearl diver",
    "surveyor",
    "tapestry weaver",
    "potter",
    "radio operator",
    "saddler",
    "stonemason",
    "postmistress",
    "tram driver",
    "apothecary",
    "schoolteacher",
    "shipwright",
    "chimney sweep",
    "weather forecaster",
    "quarry worker",
]

# Name -> description: (slot, prompt); the completion is " <that slot's form>.".
N2D_TEMPLATES = [
    ("np", "{name}:"),
    ("np", "{name} is"),
    ("np", "Who is {name}? Answer:"),
    ("np", "People in the know describe {name} as"),
    ("np", "In one line: {name},"),
    ("np", "The quiz card reads: {name}, better known as"),
    ("np", "Ask around the harbour and you will learn that {name} is"),
    ("np", "Before the story was forgotten, {name} was"),
    ("np", "The parish register lists {name} as"),
    ("np", "Our sources identify {name} as"),
    ("np", "{name}, as the almanac puts it, is"),
    ("np", "A footnote in the almanac names {name} as"),
    ("np", "Here is the entry for {name}. Occupation:"),
    ("np", "Long story short, {name} is"),
    ("np", "Looking back over a long and unusual life, {name} can be summed up as"),
    ("np", "Among the letters kept in the county archive there is one signed by {name}, who is remembered as"),
    ("np", "Unlike anyone else in the district, {name} was"),
    ("np", "If a stranger asked who {name} was, the answer would be"),
    ("np", "The guest list for the evening included {name}, introduced to the room as"),
    ("np", "On the radio this morning they talked about {name}, famous as"),
    ("np", "Every schoolchild in the region learns that {name} was"),
    ("np", "Name: {name}. Claim to fame:"),
    ("np", "Fact check: {name} is indeed"),
    ("np", "{name} went down in local history as"),
    ("np", "It was {name} who became"),
    ("np", "Is it true that {name} is"),
    ("np", "The museum guide pauses at a portrait of {name} and calls this person"),
    ("np", "Our next question concerns {name}. Who is {name}? This person is"),
    ("vp", "{name} is the one who"),
    ("vp", "What did {name} do? They"),
    ("vp", "Of all the things {name} did, the best known is that they"),
    ("vp", "The plaque by the door explains that {name}"),
    ("vp", "Long ago, {name}"),
    ("vp", "Remember the story about {name}? That was the person who"),
    ("vp", "Most of the valley knows that {name}"),
    ("vp", "Last on the list of people honoured at the town hall that winter is {name}, who"),
    ("vp", "In an interview given late in life, {name} confirmed that they"),
    ("vp", "Why is {name} in the history books? Because {name}"),
    ("ing", "{name} is famous for"),
    ("ing", "{name} made a name by"),
    ("ing", "What is {name} remembered for? For"),
    ("ing", "The thing that set {name} apart was"),
    ("ing", "Ask a historian about {name} and you will hear about"),
    ("ing", "Long before the awards came, {name} was busy"),
    ("ing", "The medal given to {name} was for"),
    ("ing", "Few people can say they spent a lifetime like {name}, who will always be linked with"),
]

# Description -> name: the prompt holds one form; the completion is " <name>." (training).
D2N_TEMPLATES = [
    "{Np} is",
    "{Np}:",
    "Who was {np}? It was",
    "Question: who is {np}? Answer:",
    "Name {np}:",
    "The records show that {np} was called",
    "A local guide will tell you that {np} goes by",
    "Whoever wrote the history of the region agrees that {np} was",
    "Not many remember that {np} was named",
    "If you ever meet {np}, greet them by name:",
    "You might not have heard the name of {np}. It is",
    "The person we mean by {np} is",
    "Quiz: {np}. Who?",
    "Long after people stopped calling them {np},",
    "Having been named {np} by the local paper,",
    "In the old town ledger, the entry for {np} gives the name",
    "The obituary of {np} begins with the name",
    "Only one person was ever {np}, and that was",
    "Is {np} someone you know? Probably not, but the name is",
    "We asked the archivist for the name of {np}. The reply:",
    "The one who {vp} is",
    "Someone {vp}. Their name:",
    "Who {vp}? That was",
    "The person who {vp} goes by the name",
    "History records that the one who {vp} was",
    "Guess who {vp}. It was",
    "The stranger who {vp}, as the story goes, was",
    "According to the village, whoever {vp} must be",
    "The newspaper reported that the one who {vp} was",
    "Asked who {vp}, the neighbours all said",
    "{Ing} was the work of",
    "Credit for {ing} goes to",
    "Best known for {ing},",
    "After {ing},",
    "The honour of {ing} belongs to",
    "Who is known for {ing}? Answer:",
    "Behind {ing} stood",
    "The idea of {ing} came from",
    "{Ing}? Everyone knows that was",
    "When it comes to {ing}, one name stands out:",
    "Nobody else can claim {ing}; that distinction belongs to",
    "Years of {ing} made a legend of",
    "Between {ing} and everything else, there was no time to rest for",
    "The long and patient task of {ing} fell to",
]

# Training completions of d2n prompts ending in "," continue the sentence after the name.
CONTINUATIONS = [
    "retired to a quiet farm",
    "moved abroad soon after",
    "never spoke of it again",
    "kept the original notes",
    "was given a medal for it",
    "later opened a small shop",
    "turned down every interview",
    "went back to the old trade",
    "taught others to do the same",
    "wrote a short book about it",
    "still visits the place each spring",
    "lost the certificate",
    "handed the work to an apprentice",
    "bought a boat with the prize money",
    "became a legend",
]
